//! The login link is bound to the browser that opened it (issue 13, item 5): the link gives that
//! browser a cookie, and the provider's callback finishes the sign-in only for a browser that
//! presents it. A stranger who saw the OAuth state (in the link's redirect, which a preview
//! bot's HEAD also gets, or in a replayed callback URL) and sends the callback, with
//! `error=access_denied` or with a code, without the cookie or with a wrong one, is asked to open
//! the link again in the same browser and takes nothing: the person still signs in afterwards.
//! The person's side runs in a real headless Chromium through node-oidc-provider's pages; the
//! stranger's requests are plain HTTP. Memory and Redis (two replicas) keep the same binding.

use crate::support;

use support::oidc;

use oidc::{OidcConfig, OidcProvider, OnLogin, Step};
use serde_json::{json, Value};
use support::broker::{providers_env, short_hash, Broker, Planned, BROKER_TOKEN};
use support::fake_microsoft::{FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::{
    free_port, get_url, http_without_cookies, path_of, HttpResponse, RedisServer, Relay,
};

const EMAIL: &str = "ana.silva@example.com";
const COOKIE_PREFIX: &str = "__Host-oauth-relay-";
const OPEN_AGAIN: &str = "Open the link again in this browser";

/// node-oidc-provider and a broker with it as the provider `corp`.
fn oidc_broker() -> (OidcProvider, Broker) {
    let planned = Planned::new();
    let provider =
        OidcProvider::start(OidcConfig::with_redirect_uris(&[&planned.callback("corp")]));
    let c = provider.config();
    let broker = planned.start(&providers_env(&[(
        "corp",
        vec![
            ("KIND", "oidc".into()),
            ("CLIENT_ID", c.client_id.clone()),
            ("CLIENT_SECRET", c.client_secret.clone()),
            ("ISSUER", provider.issuer().to_string()),
            ("SCOPES", "openid email offline_access".into()),
            ("DISPLAY_NAME", "Corp SSO".into()),
        ],
    )]));
    (provider, broker)
}

fn login_url(session: &Value) -> &str {
    session["login_url"].as_str().unwrap()
}

fn query_param(url: &str, name: &str) -> String {
    oidc::query_param(url, name).unwrap_or_else(|| panic!("no {name} in {url}"))
}

/// A request from someone else's client: only `headers`, no cookie the tests' browser holds.
fn stranger(relay: &Relay, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_without_cookies(relay.addr, "GET", path, headers, b"")
}

/// A binding cookie for the session of `oauth_state`, with a value the broker never issued.
fn wrong_cookie(oauth_state: &str) -> String {
    format!(
        "{COOKIE_PREFIX}{}=AAAAAAAAAAAAAAAAAAAAAA",
        short_hash(oauth_state)
    )
}

/// The stranger's callbacks, each turned away with the page that asks to open the link again
/// in the same browser (in the person's language), and nothing changed.
fn strangers_are_turned_away(relay: &Relay, callback_path: &str, oauth_state: &str) {
    let wrong = wrong_cookie(oauth_state);
    let cancel = format!("{callback_path}?state={oauth_state}&error=access_denied");
    let forged = format!("{callback_path}?state={oauth_state}&code=forged-code");
    for (path, cookie, lang) in [
        (&cancel, None, None),
        (&forged, None, None),
        (&cancel, Some(&wrong), None),
        (&forged, Some(&wrong), Some("pt-BR")),
    ] {
        let mut headers = Vec::new();
        if let Some(c) = cookie {
            headers.push(("Cookie", c.as_str()));
        }
        if let Some(l) = lang {
            headers.push(("Accept-Language", l));
        }
        let page = stranger(relay, path, &headers);
        assert_eq!(page.status, 403, "{path}: {}", page.text());
        let words = if lang.is_some() {
            "Abra o link de novo neste navegador"
        } else {
            OPEN_AGAIN
        };
        assert!(page.text().contains(words), "{}", page.text());
        assert_eq!(page.header("Cache-Control"), Some("no-store"));
        assert!(
            page.header("Set-Cookie").is_none(),
            "a stranger's callback touched the cookie"
        );
    }
}

fn status_of(relay: &Relay, session: &Value) -> Value {
    let path = format!("/status/{}", session["state"].as_str().unwrap());
    relay.get_auth(&path, BROKER_TOKEN).json()
}

#[test]
fn a_strangers_callback_takes_nothing_and_the_person_still_signs_in_in_a_real_browser() {
    let (provider, broker) = oidc_broker();
    let session = broker.session("corp", json!({ "expected_email": EMAIL }));
    let link = path_of(login_url(&session));
    // A preview bot asks with HEAD: it sees the redirect, and the OAuth state in it, but gets
    // no cookie and binds nothing.
    let head = http_without_cookies(broker.relay.addr, "HEAD", &link, &[], b"");
    assert_eq!(head.status, 302);
    assert!(head.header("Set-Cookie").is_none());
    let oauth_state = query_param(head.header("Location").unwrap(), "state");

    strangers_are_turned_away(&broker.relay, "/login/corp/callback", &oauth_state);
    // Nothing was taken: no code went to the provider, the session waits, nothing failed.
    assert_eq!(provider.requests("token"), 0);
    assert_eq!(status_of(&broker.relay, &session)["status"], "pending");
    assert_eq!(broker.token(&session).status, 202);
    // The log is written asynchronously: wait for the four lines, then check there are no more.
    let logs = broker
        .relay
        .wait_for_logs("\"event\":\"callback_refused\"", 4);
    let refused: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("\"event\":\"callback_refused\""))
        .collect();
    assert_eq!(refused.len(), 4, "{logs:?}");
    assert!(refused
        .iter()
        .all(|l| l.contains("\"reason\":\"browser_mismatch\"")));
    assert!(!logs.iter().any(|l| l.contains("\"callback_failed\"")));

    // The person, in Chromium: the link sets the cookie (host-only, Secure, HttpOnly, Lax, for
    // the session's lifetime), the callback finds it and clears it.
    let end = provider
        .browser(login_url(&session))
        .on_login(OnLogin::Stop)
        .then(Step::resume(0).account(&OidcConfig::ana()))
        .run();
    let cookies = end.cookies_named(COOKIE_PREFIX);
    assert_eq!(cookies.len(), 1, "{:?}", end.cookies);
    let cookie = cookies[0];
    assert_eq!(
        cookie.name,
        format!("{COOKIE_PREFIX}{}", short_hash(&oauth_state))
    );
    assert_eq!(
        (
            cookie.domain.as_str(),
            cookie.path.as_str(),
            cookie.secure,
            cookie.http_only,
            cookie.same_site.as_str()
        ),
        ("127.0.0.1", "/", true, true, "Lax")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The default session lifetime is 600 s.
    assert!(
        cookie.expires > now + 500.0 && cookie.expires <= now + 601.0,
        "{cookie:?}"
    );
    let signed_in = &end.then[0];
    assert_eq!(signed_in.status, Some(200), "{}", signed_in.text);
    assert!(
        signed_in.text.contains("Corp SSO connected"),
        "{}",
        signed_in.text
    );
    assert!(
        signed_in.cookies_named(COOKIE_PREFIX).is_empty(),
        "the callback left the cookie: {:?}",
        signed_in.cookies
    );
    let tokens = broker.token(&session);
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    assert_eq!(tokens.json()["email"], EMAIL);
    // Used up now: a stranger's replay changes nothing either.
    let replay = stranger(
        &broker.relay,
        &format!("/login/corp/callback?state={oauth_state}&error=access_denied"),
        &[],
    );
    assert!(
        replay.text().contains("Already connected"),
        "{}",
        replay.text()
    );
    assert_eq!(status_of(&broker.relay, &session)["status"], "consumed");
}

#[test]
fn two_links_open_in_one_browser_keep_their_own_cookies() {
    let (provider, broker) = oidc_broker();
    let first = broker.session("corp", json!({ "expected_email": EMAIL }));
    let second = broker.session("corp", json!({ "expected_email": EMAIL }));
    // Both links opened, up to the provider's login page, before either sign-in finishes; then
    // the first, then the second, each from its own login page.
    let end = provider
        .browser(login_url(&first))
        .on_login(OnLogin::Stop)
        .then(Step::open(login_url(&second)).on_login(OnLogin::Stop))
        .then(Step::resume(0).account(&OidcConfig::ana()))
        .then(Step::resume(1).account(&OidcConfig::ana()))
        .run();
    assert_eq!(end.cookies_named(COOKIE_PREFIX).len(), 1);
    let both = end.then[0].cookies_named(COOKIE_PREFIX);
    assert_eq!(both.len(), 2, "{:?}", end.then[0].cookies);
    assert_ne!(both[0].name, both[1].name);
    for run in &end.then[1..] {
        assert_eq!(run.status, Some(200), "{}", run.text);
        assert!(run.text.contains("Corp SSO connected"), "{}", run.text);
    }
    assert_eq!(end.then[1].cookies_named(COOKIE_PREFIX).len(), 1);
    assert!(end.then[2].cookies_named(COOKIE_PREFIX).is_empty());
    for session in [&first, &second] {
        assert_eq!(broker.token(session).status, 200);
    }
}

/// A broker on the fake Microsoft (the `/m365` paths), its state in memory or, with `redis`,
/// shared by two replicas.
struct M365 {
    fake: FakeMicrosoft,
    replicas: Vec<Relay>,
}

fn m365_brokers(redis: Option<&RedisServer>) -> M365 {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let fake = FakeMicrosoft::start_with(FakeConfig {
        redirect_uris: vec![format!("{public}/m365/callback")],
        ..FakeConfig::default()
    });
    let base = fake.base_url();
    let mut env = vec![
        ("WK_PUBLIC_BASE_URL", public.clone()),
        ("WK_M365_CLIENT_ID", "test-client-id".into()),
        ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID.into()),
        ("WK_M365_BROKER_TOKEN", BROKER_TOKEN.into()),
        ("WK_M365_LOGIN_BASE_URL", base.clone()),
        ("WK_M365_GRAPH_BASE_URL", base),
    ];
    if let Some(redis) = redis {
        env.push(("OAUTH_RELAY_REDIS_URL", redis.url()));
        env.push((
            "OAUTH_RELAY_ENCRYPTION_KEY",
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
        ));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let port = port.to_string();
    let mut replicas = vec![Relay::start_env(&["--port", &port], &env)];
    if redis.is_some() {
        replicas.push(Relay::start_env(&[], &env));
    }
    M365 { fake, replicas }
}

fn binding_holds(redis: Option<&RedisServer>) {
    let s = m365_brokers(redis);
    let (a, b) = (&s.replicas[0], s.replicas.last().unwrap());
    let res = a.request(
        "POST",
        "/m365/sessions",
        &[("Authorization", &format!("Bearer {BROKER_TOKEN}"))],
        json!({ "expected_email": "ana.silva@contoso.example" })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let session = res.json();
    let link = path_of(login_url(&session));
    // Preview bots fetch the link too (GET, ignoring cookies): the person is not locked out.
    for _ in 0..3 {
        assert_eq!(stranger(b, &link, &[]).status, 302);
    }
    // The person's browser (the tests' cookie jar) opens the link and signs in at Microsoft...
    let opened = a.get(&link);
    assert_eq!(opened.status, 302);
    let cookie = opened.header("Set-Cookie").unwrap();
    assert!(
        cookie.starts_with(COOKIE_PREFIX)
            && cookie.ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax"),
        "{cookie}"
    );
    let redirect = get_url(opened.header("Location").unwrap());
    assert_eq!(redirect.status, 302);
    let callback = path_of(redirect.header("Location").unwrap());
    let oauth_state = query_param(&callback, "state");
    // ... and before the browser comes back, a stranger replays that very redirect (a proxy
    // log), and forges a cancel: without the cookie both take nothing.
    let replayed = stranger(b, &callback, &[]);
    assert_eq!(replayed.status, 403);
    assert!(replayed.text().contains(OPEN_AGAIN));
    strangers_are_turned_away(b, "/m365/callback", &oauth_state);
    assert_eq!(
        s.fake.redeemed_codes(),
        0,
        "a stranger's callback redeemed the code"
    );
    assert_eq!(status_of(a, &session)["status"], "pending");
    // The person's browser lands (on the other replica when there are two) and is connected.
    let page = b.get(&callback);
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("Microsoft 365 connected (read-only)"));
    let cleared = page.header("Set-Cookie").unwrap();
    assert!(
        cleared.starts_with(&format!("{COOKIE_PREFIX}{}=;", short_hash(&oauth_state)))
            && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(s.fake.redeemed_codes(), 1);
    let tokens = a.get_auth(
        &format!("/token/{}", session["state"].as_str().unwrap()),
        BROKER_TOKEN,
    );
    assert_eq!(tokens.status, 200, "{}", tokens.text());
}

#[test]
fn a_callback_without_the_links_cookie_takes_nothing_in_memory() {
    binding_holds(None);
}

#[test]
fn a_callback_without_the_links_cookie_takes_nothing_on_redis_replicas() {
    let redis = RedisServer::start();
    binding_holds(Some(&redis));
}
