//! Kept connections over HTTP (issue 15), end to end: the real binary (one, or three replicas on
//! one real Redis) against the fake providers, which rotate refresh tokens by their providers'
//! rules and count every presentation, and against node-oidc-provider with rotation. A sign-in
//! that asks to be kept hands out a connection and its credential instead of the refresh
//! token; the connection's access token comes on demand, refreshed at most once per grant
//! generation across every replica, through slow providers, a replica killed mid-refresh and a
//! Redis crash mid-refresh; a dead grant needs a new sign-in, which revives the same connection;
//! deleting revokes upstream; connections outlive restarts; nothing secret is in logs, events or
//! Redis; the `token` command prints a fresh token for scripts.

use crate::support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};
use support::broker::{providers_env, Broker, Planned, BROKER_TOKEN};
use support::fake_as::{RefreshPolicy, Rotation as FakeRotation};
use support::fake_github::{FakeGitHub, FakeGitHubConfig, GitHubUser};
use support::fake_microsoft::{FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::webhook_receiver::{test_secret, Receiver};
use support::{
    eventually, get_url, http, oauth_relay, DurableRedis, HttpResponse, RedisServer, Relay,
};

const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const GH_ID: u64 = 5_830_144;
const GH_EMAIL: &str = "ana.silva@example.com";

// ------------------------------------------------------------------------------------------
// Set-up

/// A GitHub App on the fake GitHub: expiring user tokens living `secs`, refresh tokens used up
/// by their one use (GitHub's rule), and RFC 9700 reuse detection switched on, so a refresh
/// token presented twice would also kill the grant.
fn github_app(planned: &Planned, secs: u64) -> FakeGitHub {
    let mut policy = RefreshPolicy::github_app();
    policy.revoke_grant_on_reuse = true;
    FakeGitHub::start_with(FakeGitHubConfig {
        redirect_uri: planned.callback("gh"),
        github_app: true,
        access_token_lifetime_secs: secs,
        refresh_policy: policy,
        user: GitHubUser::new(GH_ID, "ana-silva", GH_EMAIL),
        ..FakeGitHubConfig::default()
    })
}

/// The provider `gh` on `fake`.
fn github_env(fake: &FakeGitHub) -> Vec<(String, String)> {
    providers_env(&[("gh", fake.provider_settings())])
}

/// A Microsoft provider `corp` on a fake Microsoft (Entra's rule: a new refresh token on every
/// use, the old one still valid).
fn microsoft(planned: &Planned, secs: u64) -> (FakeMicrosoft, Vec<(String, String)>) {
    let cfg = FakeConfig {
        redirect_uris: vec![planned.callback("corp")],
        access_token_lifetime_secs: secs,
        ..FakeConfig::default()
    };
    let fake = FakeMicrosoft::start_with(cfg.clone());
    let base = fake.base_url();
    let mut vars = vec![
        ("KIND", "microsoft".to_string()),
        ("CLIENT_ID", cfg.client_id.clone()),
        ("TENANT", DEFAULT_TENANT_ID.into()),
        ("LOGIN_URL", base.clone()),
        ("API_URL", base),
    ];
    if let Some(secret) = &cfg.client_secret {
        vars.push(("CLIENT_SECRET", secret.clone()));
    }
    (fake, providers_env(&[("corp", vars)]))
}

/// `env` with `extra` over it.
fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Settings for a single replica keeping connections in a fresh redb file.
fn in_a_file(file: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("OAUTH_RELAY_ENCRYPTION_KEY".into(), KEY.into()),
        (
            "OAUTH_RELAY_CONNECTIONS_FILE".into(),
            file.display().to_string(),
        ),
    ]
}

/// Settings for a replica on `url`'s Redis.
fn on_redis(url: &str) -> Vec<(String, String)> {
    vec![
        ("OAUTH_RELAY_ENCRYPTION_KEY".into(), KEY.into()),
        ("OAUTH_RELAY_REDIS_URL".into(), url.into()),
    ]
}

/// Another replica of `broker`'s deployment (same public URL, another port), on `env`.
fn replica(public: &str, env: &[(String, String)]) -> Relay {
    let mut vars: Vec<(&str, &str)> = vec![
        ("OAUTH_RELAY_PUBLIC_URL", public),
        ("OAUTH_RELAY_BROKER_TOKEN", BROKER_TOKEN),
    ];
    for (k, v) in env {
        vars.retain(|(key, _)| key != k);
        vars.push((k, v));
    }
    let relay = Relay::start_env(&[], &vars);
    eventually("the replica to be ready", || {
        (relay.get("/ready").status == 200).then_some(())
    });
    relay
}

/// The person at a fake's authorize URL signs in as its configured user.
fn browse(authorize: &str) -> String {
    let res = get_url(authorize);
    assert_eq!(res.status, 302, "the fake refused: {}", res.text());
    res.header("Location").unwrap().to_string()
}

/// A connection as its sign-in's hand-off named it.
#[derive(Clone, Debug)]
struct Conn {
    id: String,
    credential: String,
    /// The sign-in's hand-off (/token/{state}).
    handoff: Value,
}

/// A kept sign-in of `provider` for `who` through `broker`: the session (with `keep`), the
/// link, the provider (`browse`), the callback and the hand-off.
fn keep_sign_in(
    broker: &Broker,
    provider: &str,
    who: Value,
    browse: impl FnOnce(&str) -> String,
) -> Conn {
    let mut body = who;
    body["keep"] = json!(true);
    let session = broker.session(provider, body);
    assert_eq!(session["keep"], true, "{session}");
    let page = broker.sign_in(&session, browse);
    assert_eq!(page.status, 200, "{}", page.text());
    let res = broker.token(&session);
    assert_eq!(res.status, 200, "{}", res.text());
    let handoff = res.json();
    assert!(handoff["refresh_token"].is_null(), "{handoff}");
    let id = handoff["connection"]["id"].as_str().unwrap().to_string();
    let credential = handoff["connection"]["credential"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("conn_") && credential.starts_with("ckey_"));
    Conn {
        id,
        credential,
        handoff,
    }
}

/// `POST /connections/{id}/{action}` with `bearer` and `body` (none when `Null`).
fn post(
    addr: SocketAddr,
    id: &str,
    action: &str,
    bearer: Option<&str>,
    body: &Value,
) -> HttpResponse {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    http(
        addr,
        "POST",
        &format!("/connections/{id}/{action}"),
        &headers,
        &body,
    )
}

/// `POST /connections/{id}/token` with `bearer` and `body` (none when `Null`).
fn ask(addr: SocketAddr, id: &str, bearer: Option<&str>, body: &Value) -> HttpResponse {
    post(addr, id, "token", bearer, body)
}

/// The connection's access token (200 expected).
fn access_token(addr: SocketAddr, c: &Conn) -> String {
    let res = ask(addr, &c.id, Some(&c.credential), &Value::Null);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("Cache-Control"), Some("no-store"));
    res.json()["access_token"].as_str().unwrap().to_string()
}

/// `GET /connections/{id}` with `bearer`.
fn status(addr: SocketAddr, id: &str, bearer: &str) -> HttpResponse {
    let auth = format!("Bearer {bearer}");
    http(
        addr,
        "GET",
        &format!("/connections/{id}"),
        &[("Authorization", &auth)],
        b"",
    )
}

/// Waits until the access token named by a status or hand-off `expires_at`/`expiry` is past
/// (those name the second, so the expiry may be up to a second after it).
fn wait_until_expired(expiry: &Value) {
    let at = humantime::parse_rfc3339(expiry.as_str().expect("an expiry")).unwrap();
    eventually("the access token to expire", || {
        (SystemTime::now() > at + Duration::from_millis(1200)).then_some(())
    });
}

/// The connection's current `expires_at`, from its status.
fn expires_at(addr: SocketAddr, c: &Conn) -> Value {
    status(addr, &c.id, &c.credential).json()["expires_at"].clone()
}

// ------------------------------------------------------------------------------------------
// The API

#[test]
fn a_kept_sign_in_serves_fresh_access_tokens_to_its_credential_alone() {
    let planned = Planned::new();
    let fake = github_app(&planned, 3600);
    let dir = support::scratch("conn-api");
    let broker = planned.start(&[github_env(&fake), in_a_file(&dir.join("c.redb"))].concat());
    let addr = broker.relay.addr;
    let c = keep_sign_in(&broker, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    assert_eq!(c.handoff["subject"], GH_ID.to_string());
    // The sign-in's own access token is fresh: served without asking GitHub.
    let res = ask(addr, &c.id, Some(&c.credential), &Value::Null);
    assert_eq!(res.status, 200, "{}", res.text());
    let answer = res.json();
    assert_eq!(answer["access_token"], c.handoff["access_token"]);
    assert_eq!(answer["connection"], c.id);
    assert_eq!(answer["token_type"], c.handoff["token_type"]);
    assert!(answer["expires_in"].as_u64().unwrap() > 3000, "{answer}");
    assert_eq!(answer["expires_at"], c.handoff["expiry"]);
    let body = json!({ "min_ttl": 60, "wait": 5 });
    assert_eq!(ask(addr, &c.id, Some(&c.credential), &body).status, 200);
    assert_eq!(fake.counters().refresh_presentations, 0);

    // Nobody else gets it, nor learns whether the connection exists.
    let none = ask(addr, &c.id, None, &Value::Null);
    assert_eq!(none.status, 401);
    assert!(none.header("WWW-Authenticate").is_some());
    let wrong = ask(addr, &c.id, Some("ckey_not-the-credential"), &Value::Null);
    let unknown = ask(addr, "conn_nobody", Some(&c.credential), &Value::Null);
    assert_eq!((wrong.status, unknown.status), (404, 404));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(status(addr, &c.id, "ckey_wrong").body, unknown.body);
    // The broker token stands for the credential only where the operator allows it.
    let broker_token = ask(addr, &c.id, Some(BROKER_TOKEN), &Value::Null);
    assert_eq!(broker_token.status, 403, "{}", broker_token.text());
    assert!(broker_token
        .text()
        .contains("OAUTH_RELAY_CONNECTIONS_BROKER_TOKEN"));
    // Strict bodies.
    for bad in [
        json!({ "min_ttl": -1 }),
        json!({ "min_ttl": "60" }),
        json!({ "min_ttl": 86401 }),
        json!({ "mintl": 60 }),
        json!([1]),
    ] {
        let res = ask(addr, &c.id, Some(&c.credential), &bad);
        assert_eq!(res.status, 400, "{bad}: {}", res.text());
    }

    // Its status, by its credential or the broker token: never a token.
    for bearer in [c.credential.as_str(), BROKER_TOKEN] {
        let res = status(addr, &c.id, bearer);
        assert_eq!(res.status, 200, "{}", res.text());
        let s = res.json();
        assert_eq!(
            (
                &s["id"],
                &s["provider"],
                &s["status"],
                &s["subject"],
                &s["email"]
            ),
            (
                &json!(c.id),
                &json!("gh"),
                &json!("active"),
                &json!(GH_ID.to_string()),
                &json!(GH_EMAIL)
            )
        );
        assert_eq!(s["scopes"], json!(["read:user", "user:email"]));
        assert!(s["next_refresh_at"].is_string(), "GitHub's idle limit: {s}");
        assert!(!res
            .text()
            .contains(c.handoff["access_token"].as_str().unwrap()));
    }
    // The listing: the broker token only.
    let auth = format!("Bearer {BROKER_TOKEN}");
    let listed = http(
        addr,
        "GET",
        "/connections?provider=gh",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json()["connections"][0]["id"], c.id);
    let by_subject = format!("/connections?provider=gh&subject={GH_ID}");
    let one = http(addr, "GET", &by_subject, &[("Authorization", &auth)], b"");
    assert_eq!(one.json()["connections"].as_array().unwrap().len(), 1);
    let nobody = http(
        addr,
        "GET",
        "/connections?provider=gh&subject=1",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(nobody.json()["connections"], json!([]));
    let cred = format!("Bearer {}", c.credential);
    assert_eq!(
        http(
            addr,
            "GET",
            "/connections",
            &[("Authorization", &cred)],
            b""
        )
        .status,
        401
    );
    assert!(!listed
        .text()
        .contains(c.handoff["access_token"].as_str().unwrap()));
    // The hand-off, once.
    let log = broker.relay.logs().join("\n");
    for secret in [
        c.credential.as_str(),
        c.handoff["access_token"].as_str().unwrap(),
    ] {
        assert!(!log.contains(secret), "a secret in the log");
    }
}

#[test]
fn without_a_durable_store_keep_is_refused_naming_the_setting() {
    // No encryption key: nothing to keep connections in.
    let planned = Planned::new();
    let fake = github_app(&planned, 3600);
    let broker = planned.start(&github_env(&fake));
    let res = broker.create(
        "/sessions",
        &json!({ "provider": "gh", "expected_email": GH_EMAIL, "keep": true }),
    );
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(
        res.text().contains("OAUTH_RELAY_ENCRYPTION_KEY"),
        "{}",
        res.text()
    );
    let auth = format!("Bearer {BROKER_TOKEN}");
    let list = broker
        .relay
        .request("GET", "/connections", &[("Authorization", &auth)], b"");
    assert_eq!(list.status, 404);
    assert!(
        list.text().contains("OAUTH_RELAY_CONNECTIONS_FILE"),
        "{}",
        list.text()
    );
    broker.relay.wait_for_log("\"connections_off\"");
    // keep must be a boolean; without it, nothing changes.
    let res = broker.create(
        "/sessions",
        &json!({ "provider": "gh", "expected_email": GH_EMAIL, "keep": "yes" }),
    );
    assert_eq!(res.status, 400);
    let session = broker.session("gh", json!({ "expected_email": GH_EMAIL }));
    assert_eq!(session["keep"], false);

    // A blank file setting turns them off on purpose.
    let planned = Planned::new();
    let fake = github_app(&planned, 3600);
    let env = with(
        github_env(&fake),
        &[
            ("OAUTH_RELAY_ENCRYPTION_KEY", KEY),
            ("OAUTH_RELAY_CONNECTIONS_FILE", ""),
        ],
    );
    let broker = planned.start(&env);
    let res = broker.create(
        "/sessions",
        &json!({ "provider": "gh", "expected_email": GH_EMAIL, "keep": true }),
    );
    assert_eq!(res.status, 400);
    assert!(
        res.text().contains("OAUTH_RELAY_CONNECTIONS_FILE is blank"),
        "{}",
        res.text()
    );

    // A file that cannot be opened stops start-up, naming the setting.
    let env = with(
        github_env(&fake),
        &[
            ("OAUTH_RELAY_PUBLIC_URL", "http://127.0.0.1:1"),
            ("OAUTH_RELAY_BROKER_TOKEN", BROKER_TOKEN),
            ("OAUTH_RELAY_ENCRYPTION_KEY", KEY),
            (
                "OAUTH_RELAY_CONNECTIONS_FILE",
                "/proc/no-such-dir/connections.redb",
            ),
        ],
    );
    let stderr = support::broker::start_up_fails(&env);
    assert!(stderr.contains("OAUTH_RELAY_CONNECTIONS_FILE"), "{stderr}");
}

// ------------------------------------------------------------------------------------------
// Refreshing by each provider's rule

/// Two refreshes of `c` (each after its token expired): each answers a new token.
fn refresh_twice(addr: SocketAddr, c: &Conn) -> [String; 3] {
    let first = c.handoff["access_token"].as_str().unwrap().to_string();
    wait_until_expired(&c.handoff["expiry"]);
    let second = access_token(addr, c);
    assert_ne!(second, first);
    wait_until_expired(&expires_at(addr, c));
    let third = access_token(addr, c);
    assert_ne!(third, second);
    [first, second, third]
}

#[test]
fn each_fake_providers_rotation_rule_is_followed() {
    // GitHub: one-time refresh tokens.
    let planned = Planned::new();
    let fake = github_app(&planned, 2);
    let dir = support::scratch("conn-rules");
    let broker = planned.start(&[github_env(&fake), in_a_file(&dir.join("gh.redb"))].concat());
    let c = keep_sign_in(
        &broker,
        "gh",
        json!({ "expected_subject": GH_ID.to_string() }),
        browse,
    );
    refresh_twice(broker.relay.addr, &c);
    let n = fake.counters();
    assert_eq!(
        (n.refreshes, n.refresh_presentations, n.reuse_detections),
        (2, 2, 0)
    );
    assert_eq!(
        fake.max_presentations(),
        1,
        "a one-time refresh token presented twice"
    );

    // Microsoft: a new refresh token on every use, the old one still valid.
    let planned = Planned::new();
    let (fake, env) = microsoft(&planned, 2);
    let broker = planned.start(&[env, in_a_file(&dir.join("ms.redb"))].concat());
    let c = keep_sign_in(
        &broker,
        "corp",
        json!({ "expected_email": "ana.silva@contoso.example" }),
        browse,
    );
    assert_eq!(c.handoff["tenant"], DEFAULT_TENANT_ID);
    refresh_twice(broker.relay.addr, &c);
    assert_eq!(fake.counters().refreshes, 2);
    assert_eq!(
        fake.max_presentations(),
        1,
        "each generation's token presented once"
    );
    let sent = fake.token_requests();
    let refreshes: Vec<&str> = sent
        .iter()
        .filter_map(|p| support::fake_github::param(p, "refresh_token"))
        .collect();
    assert_eq!(refreshes.len(), 2);
    assert_ne!(
        refreshes[0], refreshes[1],
        "the rotated token is the one kept"
    );

    // Google: the refresh token never changes.
    use support::fake_google::{FakeGoogle, FakeGoogleConfig};
    let planned = Planned::new();
    let fake = FakeGoogle::start_with(FakeGoogleConfig {
        redirect_uris: vec![planned.callback("google")],
        access_token_lifetime_secs: 2,
        ..FakeGoogleConfig::default()
    });
    let cfg = fake.config();
    let env = providers_env(&[("google", fake.provider_settings())]);
    let broker = planned.start(&[env, in_a_file(&dir.join("google.redb"))].concat());
    let c = keep_sign_in(
        &broker,
        "google",
        json!({ "expected_email": cfg.user.email.clone() }),
        browse,
    );
    refresh_twice(broker.relay.addr, &c);
    assert_eq!(fake.counters().refreshes, 2);
    assert_eq!(
        fake.max_presentations(),
        2,
        "Google's one refresh token, twice"
    );
    assert_eq!(fake.config().refresh_policy.rotation, FakeRotation::Never);
}

#[test]
fn an_openid_provider_that_rotates_refresh_tokens_is_refreshed_once_per_generation() {
    use support::oidc::{OidcConfig, OidcProvider};
    let planned = Planned::new();
    let op = OidcProvider::start(OidcConfig {
        rotate_refresh_tokens: true,
        ttl: vec![("AccessToken".into(), 2)],
        ..OidcConfig::with_redirect_uris(&[&planned.callback("corp")])
    });
    let c = op.config();
    let env = providers_env(&[(
        "corp",
        vec![
            ("KIND", "oidc".into()),
            ("CLIENT_ID", c.client_id.clone()),
            ("CLIENT_SECRET", c.client_secret.clone()),
            ("ISSUER", op.issuer().to_string()),
            ("SCOPES", "openid email offline_access".into()),
        ],
    )]);
    let dir = support::scratch("conn-oidc");
    let broker = planned.start(&[env, in_a_file(&dir.join("c.redb"))].concat());
    let session = broker.session(
        "corp",
        json!({ "expected_email": "ana.silva@example.com", "keep": true }),
    );
    let end = op.sign_in(session["login_url"].as_str().unwrap(), &OidcConfig::ana());
    assert_eq!(end.status, Some(200), "{}", end.text);
    let handoff = broker.token(&session).json();
    let conn = Conn {
        id: handoff["connection"]["id"].as_str().unwrap().into(),
        credential: handoff["connection"]["credential"].as_str().unwrap().into(),
        handoff,
    };
    refresh_twice(broker.relay.addr, &conn);
    assert_eq!(op.refresh_grants(), 2);
    assert_eq!(op.refresh_grant_errors(), 0);
    assert_eq!(op.max_refresh_presentations(), 1);
    assert_eq!(
        op.grants_revoked(),
        0,
        "a reused refresh token would have revoked it"
    );
}

// ------------------------------------------------------------------------------------------
// Single flight across replicas

/// Three replicas on `redis_url` (the first at `planned`'s port), GitHub on `fake`, with
/// `extra` settings.
fn three_replicas(
    planned: Planned,
    fake: &FakeGitHub,
    redis_url: &str,
    extra: &[(&str, &str)],
) -> (Broker, Relay, Relay) {
    let env = with([github_env(fake), on_redis(redis_url)].concat(), extra);
    let public = planned.public.clone();
    let a = planned.start(&env);
    eventually("the replica to be ready", || {
        (a.relay.get("/ready").status == 200).then_some(())
    });
    (a, replica(&public, &env), replica(&public, &env))
}

/// A connection whose access token has expired; 50 callers at once, spread over the
/// replicas: one redemption at GitHub, one fresh token for all 50.
fn fifty_callers(token_delay: Duration, extra: &[(&str, &str)]) {
    let redis = RedisServer::start();
    let planned = Planned::new();
    let fake = github_app(&planned, 2);
    let (a, b, c) = three_replicas(planned, &fake, &redis.url(), extra);
    let conn = keep_sign_in(&a, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    wait_until_expired(&conn.handoff["expiry"]);
    fake.set(|cfg| {
        cfg.access_token_lifetime_secs = 3600;
        cfg.token_delay = token_delay;
    });
    let addrs = [a.relay.addr, b.addr, c.addr];
    let barrier = Arc::new(Barrier::new(50));
    let answers: Vec<HttpResponse> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..50)
            .map(|i| {
                let (barrier, conn) = (barrier.clone(), &conn);
                scope.spawn(move || {
                    barrier.wait();
                    ask(addrs[i % 3], &conn.id, Some(&conn.credential), &Value::Null)
                })
            })
            .collect();
        callers.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let tokens: Vec<String> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["access_token"].as_str().unwrap().to_string()
        })
        .collect();
    assert_ne!(tokens[0], conn.handoff["access_token"].as_str().unwrap());
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "not one token: {tokens:?}"
    );
    let n = fake.counters();
    assert_eq!(
        (n.refresh_presentations, n.refreshes, n.reuse_detections),
        (1, 1, 0),
        "{n:?}"
    );
    assert_eq!(fake.max_presentations(), 1);
}

#[test]
fn fifty_callers_on_three_replicas_make_one_redemption() {
    fifty_callers(Duration::ZERO, &[]);
}

#[test]
fn a_provider_slower_than_every_lease_still_sees_one_redemption() {
    // GitHub answers after 6 s: three times the time after which a silent refresh counts as a
    // dead replica's, and past the settle window; its replica beats, so nobody takes over.
    fifty_callers(
        Duration::from_secs(6),
        &[
            ("OAUTH_RELAY_CONNECTIONS_STALE_AFTER_SECS", "2"),
            ("OAUTH_RELAY_CONNECTIONS_SETTLE_SECS", "1"),
        ],
    );
}

/// Replica `a` begins a refresh the provider holds for `hold`, and is killed (SIGKILL) while
/// the provider has it.
fn kill_mid_refresh(a: &mut Relay, conn: &Conn, presentations: impl Fn() -> usize) {
    let res = ask(
        a.addr,
        &conn.id,
        Some(&conn.credential),
        &json!({ "wait": 1 }),
    );
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.json()["status"], "pending");
    assert_eq!(res.header("Retry-After"), Some("1"));
    eventually("the presentation to reach the provider", || {
        (presentations() == 1).then_some(())
    });
    a.signal("KILL");
    a.wait_exit();
}

#[test]
fn a_replica_killed_mid_refresh_never_has_a_one_time_token_presented_twice() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&test_secret());
    let planned = Planned::new();
    let fake = github_app(&planned, 2);
    let settings = [
        ("OAUTH_RELAY_CONNECTIONS_STALE_AFTER_SECS", "2"),
        ("OAUTH_RELAY_CONNECTIONS_KEEP_ALIVE_SECS", "1"),
        ("OAUTH_RELAY_WEBHOOK_URL", &receiver.url()),
        ("OAUTH_RELAY_WEBHOOK_SECRET", &test_secret()),
    ];
    let (mut a, b, _c) = three_replicas(planned, &fake, &redis.url(), &settings);
    let conn = keep_sign_in(&a, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    wait_until_expired(&conn.handoff["expiry"]);
    fake.set(|c| c.token_delay = Duration::from_secs(4));
    kill_mid_refresh(&mut a.relay, &conn, || {
        fake.counters().refresh_presentations
    });
    // Nobody asks: the keep-alive of the others finds the refresh orphaned. GitHub's token may
    // or may not have been used up, so nobody presents it again: the connection needs a new
    // sign-in.
    let s = eventually("the orphaned refresh to be resolved", || {
        let s = status(b.addr, &conn.id, &conn.credential).json();
        (s["status"] == "needs_reauth").then_some(s)
    });
    assert_eq!(s["reason"], "refresh_ambiguous");
    let res = ask(b.addr, &conn.id, Some(&conn.credential), &Value::Null);
    assert_eq!(res.status, 409, "{}", res.text());
    assert_eq!(
        (res.json()["status"].as_str(), res.json()["reason"].as_str()),
        (Some("needs_reauth"), Some("refresh_ambiguous"))
    );
    // Past the provider's delay: still the one presentation.
    eventually("GitHub to answer the dead replica", || {
        (fake.counters().refreshes == 1).then_some(())
    });
    assert_eq!(fake.counters().refresh_presentations, 1);
    assert_eq!(fake.max_presentations(), 1);
    let event = eventually("the needs_reauth event", || {
        receiver
            .accepted()
            .into_iter()
            .map(|e| e.json())
            .find(|e| e["type"] == "connection.needs_reauth")
    });
    assert_eq!(event["data"]["connection"], conn.id);
    assert_eq!(event["data"]["reason"], "refresh_ambiguous");
}

#[test]
fn a_replica_killed_mid_refresh_is_presented_again_where_that_is_harmless() {
    // Microsoft keeps a rotated refresh token valid: after the settle window another replica
    // presents it again, and the grant is not lost.
    let redis = RedisServer::start();
    let planned = Planned::new();
    let (fake, env) = microsoft(&planned, 2);
    let env = with(
        [env, on_redis(&redis.url())].concat(),
        &[
            ("OAUTH_RELAY_CONNECTIONS_STALE_AFTER_SECS", "2"),
            ("OAUTH_RELAY_CONNECTIONS_SETTLE_SECS", "2"),
        ],
    );
    let public = planned.public.clone();
    let mut a = planned.start(&env);
    let b = replica(&public, &env);
    let conn = keep_sign_in(
        &a,
        "corp",
        json!({ "expected_email": "ana.silva@contoso.example" }),
        browse,
    );
    wait_until_expired(&conn.handoff["expiry"]);
    fake.set(|c| c.token_delay = Duration::from_secs(4));
    kill_mid_refresh(&mut a.relay, &conn, || {
        fake.counters().refresh_presentations
    });
    fake.set(|c| {
        c.token_delay = Duration::ZERO;
        c.access_token_lifetime_secs = 3600;
    });
    let res = ask(
        b.addr,
        &conn.id,
        Some(&conn.credential),
        &json!({ "wait": 30 }),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let s = status(b.addr, &conn.id, &conn.credential).json();
    assert_eq!(s["status"], "active");
    // The dead replica's presentation and one more, of the same token.
    eventually("the provider to answer both", || {
        (fake.counters().refreshes == 2).then_some(())
    });
    assert_eq!(fake.counters().refresh_presentations, 2);
    assert_eq!(fake.max_presentations(), 2);
}

#[test]
fn a_redis_crash_mid_refresh_neither_repeats_a_presentation_nor_loses_the_grant() {
    let mut redis = DurableRedis::start();
    let planned = Planned::new();
    let fake = github_app(&planned, 2);
    let env = [github_env(&fake), on_redis(&redis.url())].concat();
    let broker = planned.start(&env);
    let addr = broker.relay.addr;
    let conn = keep_sign_in(&broker, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    wait_until_expired(&conn.handoff["expiry"]);
    // The refreshed token outlives GitHub's slowness (it counts from the request).
    fake.set(|c| {
        c.token_delay = Duration::from_secs(3);
        c.access_token_lifetime_secs = 6;
    });
    let answer = std::thread::scope(|scope| {
        let caller = scope.spawn(|| {
            ask(
                addr,
                &conn.id,
                Some(&conn.credential),
                &json!({ "wait": 60 }),
            )
        });
        eventually("the presentation to reach GitHub", || {
            (fake.counters().refresh_presentations == 1).then_some(())
        });
        redis.crash();
        std::thread::sleep(Duration::from_millis(500));
        redis.start_again();
        caller.join().unwrap()
    });
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_ne!(answer.json()["access_token"], conn.handoff["access_token"]);
    assert_eq!(fake.counters().refresh_presentations, 1);
    // The rotated refresh token is the one kept: the next refresh works.
    fake.set(|c| c.token_delay = Duration::ZERO);
    wait_until_expired(&answer.json()["expires_at"]);
    access_token(addr, &conn);
    let n = fake.counters();
    assert_eq!(
        (n.refreshes, n.refresh_presentations, n.reuse_detections),
        (2, 2, 0)
    );
    assert_eq!(fake.max_presentations(), 1);
}

// ------------------------------------------------------------------------------------------
// Durable

#[test]
fn connections_outlive_a_restart_of_the_single_replica_and_of_redis() {
    // The redb file: the process killed and started again on it.
    let planned = Planned::new();
    let fake = github_app(&planned, 3600);
    let dir = support::scratch("conn-restart");
    let env = [github_env(&fake), in_a_file(&dir.join("c.redb"))].concat();
    let (port, public) = (planned.port, planned.public.clone());
    let mut broker = planned.start(&env);
    let conn = keep_sign_in(&broker, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    let before = status(broker.relay.addr, &conn.id, &conn.credential).json();
    // The file is this process's: a second one is refused at start-up.
    let second = with(
        env.clone(),
        &[
            ("OAUTH_RELAY_PUBLIC_URL", &public),
            ("OAUTH_RELAY_BROKER_TOKEN", BROKER_TOKEN),
        ],
    );
    let stderr = support::broker::start_up_fails(&second);
    assert!(stderr.contains("OAUTH_RELAY_CONNECTIONS_FILE"), "{stderr}");
    broker.relay.signal("KILL");
    broker.relay.wait_exit();
    let again = Planned { port, public }.start(&env);
    let after = status(again.relay.addr, &conn.id, &conn.credential);
    assert_eq!(after.status, 200, "{}", after.text());
    let after = after.json();
    for field in [
        "id",
        "provider",
        "subject",
        "email",
        "scopes",
        "created_at",
        "expires_at",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(
        access_token(again.relay.addr, &conn),
        conn.handoff["access_token"].as_str().unwrap()
    );

    // Redis with its append-only file: crashed and started again on its data.
    let mut redis = DurableRedis::start();
    let planned = Planned::new();
    let fake = github_app(&planned, 3600);
    let broker = planned.start(&[github_env(&fake), on_redis(&redis.url())].concat());
    broker.relay.wait_for_log("\"listening\"");
    assert!(
        !broker
            .relay
            .logs()
            .iter()
            .any(|l| l.contains("redis_persistence")),
        "AOF with fsync always needs no warning"
    );
    let conn = keep_sign_in(&broker, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    redis.crash_and_restart();
    let token = eventually("Redis to answer again", || {
        let res = ask(
            broker.relay.addr,
            &conn.id,
            Some(&conn.credential),
            &Value::Null,
        );
        (res.status == 200).then(|| res.json()["access_token"].clone())
    });
    assert_eq!(token, conn.handoff["access_token"]);
}

#[test]
fn a_redis_that_persists_nothing_is_warned_about_at_start_up() {
    let redis = RedisServer::start();
    let planned = Planned::new();
    let fake = github_app(&planned, 3600);
    let broker = planned.start(&[github_env(&fake), on_redis(&redis.url())].concat());
    let line = broker.relay.wait_for_log("\"redis_persistence\"");
    assert!(line.contains("appendfsync always"), "{line}");
}

// ------------------------------------------------------------------------------------------
// Re-authorization, deletion

/// `POST /connections/{id}/reauthorize` with `bearer` and `body` (none when `Null`).
fn reauthorize(addr: SocketAddr, id: &str, bearer: &str, body: &Value) -> HttpResponse {
    post(addr, id, "reauthorize", Some(bearer), body)
}

#[test]
fn a_dead_grant_needs_a_new_sign_in_which_revives_the_same_connection_for_its_account_only() {
    let receiver = Receiver::start(&test_secret());
    let planned = Planned::new();
    let fake = github_app(&planned, 2);
    let other = GitHubUser::new(999, "someone-else", "someone@example.com");
    fake.add_user(other.clone());
    let dir = support::scratch("conn-revive");
    let env = with(
        [github_env(&fake), in_a_file(&dir.join("c.redb"))].concat(),
        &[
            ("OAUTH_RELAY_WEBHOOK_URL", &receiver.url()),
            ("OAUTH_RELAY_WEBHOOK_SECRET", &test_secret()),
        ],
    );
    let broker = planned.start(&env);
    let addr = broker.relay.addr;
    let conn = keep_sign_in(&broker, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    // The person revokes the app at GitHub: the refresh token dies.
    assert_eq!(fake.revoke_grants(), 1);
    wait_until_expired(&conn.handoff["expiry"]);
    let res = ask(addr, &conn.id, Some(&conn.credential), &Value::Null);
    assert_eq!(res.status, 409, "{}", res.text());
    let body = res.json();
    assert_eq!(
        (body["status"].as_str(), body["reason"].as_str()),
        (Some("needs_reauth"), Some("invalid_grant"))
    );
    assert!(body["message"].as_str().unwrap().contains("reauthorize"));
    assert_eq!(
        status(addr, &conn.id, &conn.credential).json()["status"],
        "needs_reauth"
    );
    // Asking again presents nothing more.
    assert_eq!(
        ask(addr, &conn.id, Some(&conn.credential), &Value::Null).status,
        409
    );
    assert_eq!(fake.counters().refresh_presentations, 1);

    // A new link, pinned to the connection's account: someone else signs in there, and fails.
    let link = reauthorize(addr, &conn.id, &conn.credential, &json!({}));
    assert_eq!(link.status, 200, "{}", link.text());
    let session = link.json();
    assert_eq!(
        (
            &session["provider"],
            &session["expected_subject"],
            &session["connection"],
            &session["keep"]
        ),
        (
            &json!("gh"),
            &json!(GH_ID.to_string()),
            &json!(conn.id),
            &json!(false)
        )
    );
    let authorize = broker.open(&session);
    let page = broker.arrive(&fake.sign_in(&authorize, &other).unwrap());
    assert_eq!(page.status, 403, "{}", page.text());
    assert_eq!(broker.status(&session)["reason"], "subject_mismatch");
    assert_eq!(
        status(addr, &conn.id, &conn.credential).json()["status"],
        "needs_reauth"
    );

    // The same account, at another link (the broker token may ask for it too): the same
    // connection is back, with the same credential.
    fake.set(|c| c.access_token_lifetime_secs = 3600);
    let link = reauthorize(addr, &conn.id, BROKER_TOKEN, &Value::Null);
    assert_eq!(link.status, 200, "{}", link.text());
    let session = link.json();
    let page = broker.sign_in(&session, browse);
    assert_eq!(page.status, 200, "{}", page.text());
    let handoff = broker.token(&session).json();
    assert_eq!(
        handoff["connection"],
        json!({ "id": conn.id, "credential": null })
    );
    assert!(handoff["refresh_token"].is_null());
    let s = status(addr, &conn.id, &conn.credential).json();
    assert_eq!(
        (s["status"].as_str(), s["reason"].as_str()),
        (Some("active"), None)
    );
    assert_eq!(
        access_token(addr, &conn),
        handoff["access_token"].as_str().unwrap()
    );
    let auth = format!("Bearer {BROKER_TOKEN}");
    let all = broker
        .relay
        .request("GET", "/connections", &[("Authorization", &auth)], b"")
        .json();
    assert_eq!(
        all["connections"].as_array().unwrap().len(),
        1,
        "revived, not made anew"
    );
    // A link for a connection nobody has, or with a wrong credential: the same 404.
    let unknown = reauthorize(addr, "conn_nobody", &conn.credential, &json!({}));
    let wrong = reauthorize(addr, &conn.id, "ckey_wrong", &json!({}));
    assert_eq!((unknown.status, wrong.status), (404, 404));
    assert_eq!(unknown.body, wrong.body);

    // Each step's completion event, with the connection's id and no secret.
    let kinds = [
        "connection.created",
        "connection.needs_reauth",
        "connection.revived",
    ];
    let events = eventually("the connection's events", || {
        let events: Vec<Value> = receiver.accepted().iter().map(|e| e.json()).collect();
        kinds
            .iter()
            .all(|k| events.iter().any(|e| e["type"] == *k))
            .then_some(events)
    });
    for e in events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("connection."))
    {
        assert_eq!(e["data"]["connection"], conn.id, "{e}");
        assert_eq!(e["data"]["provider"], "gh");
        let text = e.to_string();
        assert!(
            !text.contains(&conn.credential) && !text.contains(GH_EMAIL),
            "{text}"
        );
    }
    let created = events
        .iter()
        .find(|e| e["type"] == "connection.created")
        .unwrap();
    assert_eq!(created["data"]["status"], "active");
    let needs = events
        .iter()
        .find(|e| e["type"] == "connection.needs_reauth")
        .unwrap();
    assert_eq!(needs["data"]["reason"], "invalid_grant");
}

#[test]
fn deleting_forgets_the_grant_and_says_whether_the_provider_revoked_it() {
    let receiver = Receiver::start(&test_secret());
    let planned = Planned::new();
    let fake = github_app(&planned, 3600);
    let dir = support::scratch("conn-delete");
    let webhook = [
        ("OAUTH_RELAY_WEBHOOK_URL", receiver.url()),
        ("OAUTH_RELAY_WEBHOOK_SECRET", test_secret()),
    ];
    let webhook: Vec<(&str, &str)> = webhook.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let broker = planned.start(&with(
        [github_env(&fake), in_a_file(&dir.join("gh.redb"))].concat(),
        &webhook,
    ));
    let addr = broker.relay.addr;
    let conn = keep_sign_in(&broker, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    let delete = |bearer: &str, id: &str| {
        let auth = format!("Bearer {bearer}");
        http(
            addr,
            "DELETE",
            &format!("/connections/{id}"),
            &[("Authorization", &auth)],
            b"",
        )
    };
    assert_eq!(delete("ckey_wrong", &conn.id).status, 404);
    let res = delete(&conn.credential, &conn.id);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json(),
        json!({ "id": conn.id, "status": "deleted", "revoked": true, "revocation": "revoked",
                "interrupted": false })
    );
    assert_eq!(fake.revocations(), 1);
    // GitHub ended the grant: its token is dead there too.
    assert_eq!(
        ask(addr, &conn.id, Some(&conn.credential), &Value::Null).status,
        404
    );
    assert_eq!(status(addr, &conn.id, &conn.credential).status, 404);
    assert_eq!(delete(&conn.credential, &conn.id).status, 404);
    let event = eventually("the deleted event", || {
        receiver
            .accepted()
            .into_iter()
            .map(|e| e.json())
            .find(|e| e["type"] == "connection.deleted")
    });
    assert_eq!(
        event["data"],
        json!({ "connection": conn.id, "provider": "gh", "status": "deleted",
                                      "reason": null, "revoked": true })
    );

    // Microsoft offers no revocation: the answer says so (the broker token may delete too).
    let planned = Planned::new();
    let (_fake, env) = microsoft(&planned, 3600);
    let broker = planned.start(&[env, in_a_file(&dir.join("ms.redb"))].concat());
    let conn = keep_sign_in(
        &broker,
        "corp",
        json!({ "expected_email": "ana.silva@contoso.example" }),
        browse,
    );
    let auth = format!("Bearer {BROKER_TOKEN}");
    let res = broker.relay.request(
        "DELETE",
        &format!("/connections/{}", conn.id),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        (
            res.json()["revoked"].as_bool(),
            res.json()["revocation"].as_str()
        ),
        (Some(false), Some("not_supported"))
    );
}

// ------------------------------------------------------------------------------------------
// Nothing in the clear

#[test]
fn no_token_or_credential_in_logs_events_metrics_or_redis() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&test_secret());
    let planned = Planned::new();
    let fake = github_app(&planned, 2);
    let env = with(
        [github_env(&fake), on_redis(&redis.url())].concat(),
        &[
            ("OAUTH_RELAY_WEBHOOK_URL", &receiver.url()),
            ("OAUTH_RELAY_WEBHOOK_SECRET", &test_secret()),
            ("OAUTH_RELAY_LOG_LEVEL", "debug"),
        ],
    );
    let broker = planned.start(&env);
    let addr = broker.relay.addr;
    let conn = keep_sign_in(&broker, "gh", json!({ "expected_email": GH_EMAIL }), browse);
    let tokens = refresh_twice(addr, &conn);
    // The refresh tokens the broker presented (the sign-in's, and the one the first refresh
    // rotated to), with every access token and the credential.
    let presented: Vec<String> = fake
        .token_requests()
        .iter()
        .filter_map(|p| support::fake_github::param(p, "refresh_token").map(String::from))
        .collect();
    assert_eq!(presented.len(), 2);
    let mut secrets: Vec<String> = tokens.to_vec();
    secrets.extend(presented);
    secrets.push(conn.credential.clone());
    let metrics = http(addr, "GET", "/metrics", &[], b"").text();
    let events: String = eventually("the created event", || {
        let all = receiver.accepted();
        all.iter()
            .any(|e| e.json()["type"] == "connection.created")
            .then(|| {
                all.iter()
                    .map(|e| e.body.clone())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
    });
    let dump = redis.dump();
    let dump = String::from_utf8_lossy(&dump);
    assert!(dump.contains("conn:"), "the connection is in Redis");
    let logs = broker.relay.logs().join("\n");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "in the log: {secret}");
        assert!(!events.contains(secret.as_str()), "in an event: {secret}");
        assert!(!metrics.contains(secret.as_str()), "in /metrics: {secret}");
        assert!(!dump.contains(secret.as_str()), "in Redis: {secret}");
    }
    for private in [GH_EMAIL, &GH_ID.to_string(), &conn.id] {
        assert!(!dump.contains(private), "in Redis in the clear: {private}");
    }
}

// ------------------------------------------------------------------------------------------
// The command line

#[test]
fn the_token_command_prints_a_fresh_access_token_for_scripts() {
    let planned = Planned::new();
    let fake = github_app(&planned, 2);
    let dir = support::scratch("conn-cli");
    let broker = planned.start(&[github_env(&fake), in_a_file(&dir.join("c.redb"))].concat());
    let server = broker.public.clone();

    // login-link --keep --wait: the link at once, then the hand-off with the connection.
    let mut child = oauth_relay(&[
        "login-link",
        GH_EMAIL,
        "--provider",
        "gh",
        "--server",
        &server,
        "--keep",
        "--wait",
        "--timeout-secs",
        "60",
    ])
    .env("OAUTH_RELAY_BROKER_TOKEN", BROKER_TOKEN)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let link = loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "no login_url"
        );
        if let Some(url) = line.trim().strip_prefix("login_url: ") {
            break url.to_string();
        }
    };
    let page = broker.relay.get(&support::path_of(&link));
    let redirect = browse(page.header("Location").unwrap());
    assert_eq!(broker.arrive(&redirect).status, 200);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let handoff: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    let id = handoff["connection"]["id"].as_str().unwrap().to_string();
    let credential = handoff["connection"]["credential"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(handoff["refresh_token"].is_null());

    // token: the credential from a variable, then from stdin; never from argv.
    let token_with = |credential: &str| {
        oauth_relay(&[
            "token",
            &id,
            "--server",
            &server,
            "--credential-env",
            "CONN_CRED",
        ])
        .env("CONN_CRED", credential)
        .output()
        .unwrap()
    };
    let out = token_with(&credential);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        handoff["access_token"].as_str().unwrap()
    );
    wait_until_expired(&handoff["expiry"]);
    let mut child = oauth_relay(&[
        "token",
        &id,
        "--server",
        &server,
        "--credential-stdin",
        "--json",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        format!("{credential}\n").as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(answer["access_token"], handoff["access_token"], "refreshed");
    assert_eq!(answer["connection"], id);
    assert_eq!(fake.counters().refreshes, 1);
    // No credential, or a wrong one: exit 1 and nothing on stdout.
    let out = oauth_relay(&["token", &id, "--server", &server])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--credential-env"));
    let out = token_with("ckey_wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    // A dead grant: exit 2, saying how to get a new sign-in.
    fake.revoke_grants();
    wait_until_expired(&answer["expires_at"]);
    let out = token_with(&credential);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid_grant") && stderr.contains("reauthorize"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
