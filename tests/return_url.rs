//! A way back to the chat (issue 9): a session may carry a `return_url` on an origin the operator
//! allows (`OAUTH_RELAY_RETURN_URL_ORIGINS`), and the success page, in the person's language,
//! offers a plain "Back to <host>" link to it. The real binary against the fake Microsoft for the
//! API and the pages, and a real Chromium signing in at a real OpenID Provider and clicking the
//! link to a local "chat" that records the visit.

use crate::support;

use support::oidc;

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use support::broker::{providers_env, start_up_fails, Broker, Planned, BROKER_TOKEN};
use support::fake_microsoft::{FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::{get_url, HttpResponse};

use support::fake_http::{FakeReply, FakeServer};

const EMAIL: &str = "ana.silva@contoso.example";
const CHAT: &str = "https://chat.example.com";
/// A return URL with everything that must be escaped in an attribute, and a fragment.
const RETURN_URL: &str = "https://chat.example.com/c/42?thread=a&b=1#/room/!r:example.com";
const ESCAPED: &str = "https://chat.example.com/c/42?thread=a&amp;b=1#/room/!r:example.com";

struct Setup {
    fake: FakeMicrosoft,
    broker: Broker,
}

/// A fake Microsoft and a broker (provider `m365`) with these allowed origins (`None`: unset).
fn setup(origins: Option<&str>, tweak: impl FnOnce(&mut FakeConfig)) -> Setup {
    let planned = Planned::new();
    let mut cfg = FakeConfig {
        redirect_uris: vec![format!("{}/m365/callback", planned.public)],
        ..FakeConfig::default()
    };
    tweak(&mut cfg);
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
    if let Some(o) = origins {
        vars.push(("OAUTH_RELAY_RETURN_URL_ORIGINS".into(), o.into()));
    }
    let broker = planned.start_wk(&vars);
    Setup { fake, broker }
}

impl Setup {
    fn create(&self, path: &str, body: Value) -> HttpResponse {
        self.broker.create(path, &body)
    }

    fn session(&self, return_url: Option<&str>) -> Value {
        let res = self.create(
            "/m365/sessions",
            json!({ "expected_email": EMAIL, "return_url": return_url }),
        );
        assert_eq!(res.status, 200, "{}", res.text());
        res.json()
    }

    /// Opens the link, lets the fake Microsoft answer, and brings its redirect back in `lang`.
    fn sign_in(&self, session: &Value, lang: Option<&str>) -> HttpResponse {
        let authorize = self.broker.open(session);
        let res = get_url(&authorize);
        assert_eq!(res.status, 302, "{}", res.text());
        self.broker.arrive_in(res.header("Location").unwrap(), lang)
    }
}

#[test]
fn return_urls_outside_the_allowed_origins_are_refused() {
    let s = setup(
        Some("https://chat.example.com, https://teams.example.com:8443"),
        |_| {},
    );
    let long = format!("{CHAT}/{}", "a".repeat(2048));
    let bad: Vec<Value> = [
        // A prefix or suffix of an allowed host, user information, backslashes.
        "https://chat.example.com.evil.test/",
        "https://evil.test/?https://chat.example.com",
        "https://chat.example.com@evil.test/",
        "https://user@chat.example.com/",
        "https://evil.test\\@chat.example.com/",
        "https:\\\\chat.example.com\\",
        "https://chat.example.com\\.evil.test/",
        // Not absolute https URLs.
        "javascript:alert(1)",
        "javascript://chat.example.com/%0aalert(1)",
        "//chat.example.com/c/42",
        "/c/42",
        "chat.example.com/c/42",
        "https:chat.example.com/c/42",
        "data:text/html,<script>alert(1)</script>",
        // Another port, another scheme, an unlisted subdomain.
        "https://chat.example.com:8443/",
        "https://teams.example.com/",
        "http://chat.example.com/",
        "https://www.chat.example.com/",
        // Whitespace and controls a browser would drop or trim.
        " https://chat.example.com/",
        "https://chat.exa\tmple.com/",
        "https://chat.example.com/\r\nLocation: https://evil.test",
        "",
        long.as_str(),
    ]
    .iter()
    .map(|u| json!(u))
    .chain([json!(42), json!(["https://chat.example.com/"]), json!(true)])
    .collect();
    for path in ["/m365/sessions", "/sessions"] {
        for url in &bad {
            let mut body = json!({ "expected_email": EMAIL, "return_url": url });
            if path == "/sessions" {
                body["provider"] = json!("m365");
            }
            let res = s.create(path, body);
            assert_eq!(res.status, 400, "{path} {url}: {}", res.text());
            assert!(res.text().contains("return_url"), "{}", res.text());
        }
    }
    // Allowed: exact origins, default port spelled out, upper-case host, a fragment.
    for (path, url) in [
        ("/m365/sessions", RETURN_URL),
        ("/sessions", "https://CHAT.example.com:443/"),
        ("/sessions", "https://teams.example.com:8443/l/chat/19:abc"),
    ] {
        let body = json!({ "provider": "m365", "expected_email": EMAIL, "return_url": url });
        let res = s.create(path, body);
        assert_eq!(res.status, 200, "{url}: {}", res.text());
        let session = res.json();
        assert_eq!(session["return_url"], url, "{session}");
        assert_eq!(s.broker.status(&session)["return_url"], url);
    }
    // A session without one says so.
    let plain = s.session(None);
    assert_eq!(plain["return_url"], Value::Null);
    assert!(plain.as_object().unwrap().contains_key("return_url"));
}

#[test]
fn without_allowed_origins_no_return_url_is_accepted() {
    let s = setup(None, |_| {});
    let res = s.create(
        "/m365/sessions",
        json!({ "expected_email": EMAIL, "return_url": RETURN_URL }),
    );
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(
        res.text().contains("operator must allow")
            && res.text().contains("OAUTH_RELAY_RETURN_URL_ORIGINS"),
        "{}",
        res.text()
    );
    assert_eq!(s.session(None)["return_url"], Value::Null);
}

#[test]
fn invalid_allowed_origins_stop_start_up() {
    for origins in [
        "http://chat.example.com",
        "https://chat.example.com/path",
        "chat.example.com",
        "https://chat.example.com,javascript:alert(1)",
    ] {
        let env: Vec<(String, String)> = [
            ("OAUTH_RELAY_PUBLIC_URL", "https://relay.example.com"),
            ("OAUTH_RELAY_BROKER_TOKEN", BROKER_TOKEN),
            ("WK_M365_CLIENT_ID", "client"),
            ("OAUTH_RELAY_RETURN_URL_ORIGINS", origins),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let stderr = start_up_fails(&env);
        assert!(
            stderr.contains("OAUTH_RELAY_RETURN_URL_ORIGINS"),
            "{origins}: {stderr}"
        );
    }
}

/// Issue 13, item 10: a port must be a number a browser reads the same way (at most 65535,
/// digits only). `http::Uri` let `:99999` (no port at all, so the default) and `:+443` (443)
/// through, so such a URL passed as the allowed origin.
#[test]
fn ports_that_are_not_numbers_are_refused_in_urls_and_at_start_up() {
    let s = setup(Some("https://chat.example.com"), |_| {});
    for url in [
        "https://chat.example.com:99999/c/42",
        "https://chat.example.com:65536/",
        "https://chat.example.com:+443/c/42",
        "https://chat.example.com:-443/",
        "https://chat.example.com:443abc/",
        "https://chat.example.com:0x1bb/",
        "https://chat.example.com:443:443/",
    ] {
        for path in ["/m365/sessions", "/sessions"] {
            let body = json!({ "provider": "m365", "expected_email": EMAIL, "return_url": url });
            let res = s.create(path, body);
            assert_eq!(res.status, 400, "{path} {url}: {}", res.text());
            assert!(res.text().contains("return_url"), "{}", res.text());
        }
    }
    // The same origin with its port spelled as a number still passes.
    let body =
        json!({ "expected_email": EMAIL, "return_url": "https://chat.example.com:443/c/42" });
    assert_eq!(s.create("/m365/sessions", body).status, 200);
    for origins in [
        "https://chat.example.com:99999",
        "https://chat.example.com:+443",
        "https://chat.example.com,https://teams.example.com:65536",
        "http://127.0.0.1:+9",
    ] {
        let env: Vec<(String, String)> = [
            ("OAUTH_RELAY_PUBLIC_URL", "https://relay.example.com"),
            ("OAUTH_RELAY_BROKER_TOKEN", BROKER_TOKEN),
            ("WK_M365_CLIENT_ID", "client"),
            ("OAUTH_RELAY_RETURN_URL_ORIGINS", origins),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let stderr = start_up_fails(&env);
        assert!(
            stderr.contains("OAUTH_RELAY_RETURN_URL_ORIGINS")
                && stderr.contains("is not an origin"),
            "{origins}: {stderr}"
        );
    }
}

#[test]
fn the_success_page_links_back_in_the_persons_language() {
    let s = setup(Some(CHAT), |_| {});
    let link = |text: &str| format!("<a href=\"{ESCAPED}\" rel=\"noopener noreferrer\">{text}</a>");

    let session = s.session(Some(RETURN_URL));
    let page = s.sign_in(&session, None);
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains("Microsoft 365 connected"),
        "{}",
        page.text()
    );
    assert!(
        page.text().contains(&link("Back to chat.example.com")),
        "{}",
        page.text()
    );
    assert_eq!(page.header("Content-Language"), Some("en"));
    // A link, never a redirect: no Location, no refresh, no script.
    assert!(page.header("Location").is_none());
    let html = page.text().to_ascii_lowercase();
    assert!(!html.contains("<script") && !html.contains("http-equiv"));
    assert_eq!(s.broker.token(&session).status, 200);

    let session = s.session(Some(RETURN_URL));
    let page = s.sign_in(&session, Some("pt-BR,pt;q=0.9"));
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains("Microsoft 365 conectado"),
        "{}",
        page.text()
    );
    assert!(
        page.text().contains(&link("Voltar para chat.example.com")),
        "{}",
        page.text()
    );
    assert_eq!(page.header("Content-Language"), Some("pt-BR"));

    // Without a return URL the page is as before.
    let session = s.session(None);
    let page = s.sign_in(&session, None);
    assert_eq!(page.status, 200);
    assert!(!page.text().contains("<a "), "{}", page.text());
}

#[test]
fn failure_pages_offer_no_way_back() {
    let s = setup(Some(CHAT), |c| c.cancel = true);
    for lang in [None, Some("pt-BR")] {
        let session = s.session(Some(RETURN_URL));
        let page = s.sign_in(&session, lang);
        assert_eq!(page.status, 200, "{}", page.text());
        assert_eq!(s.broker.status(&session)["reason"], "access_denied");
        assert!(!page.text().contains("<a "), "{}", page.text());
        assert!(!page.text().contains("chat.example.com"), "{}", page.text());
    }
    // Another account signs in: 403, no link either.
    s.fake.set(|c| {
        c.cancel = false;
        c.user_mail = Some("bob@contoso.example".into());
    });
    let session = s.session(Some(RETURN_URL));
    let page = s.sign_in(&session, None);
    assert_eq!(page.status, 403, "{}", page.text());
    assert!(!page.text().contains("chat.example.com"), "{}", page.text());
    // A finished sign-in's link opened again ("Already connected") offers none.
    s.fake.set(|c| c.user_mail = Some(EMAIL.into()));
    let session = s.session(Some(RETURN_URL));
    assert_eq!(s.sign_in(&session, None).status, 200);
    let again = s
        .broker
        .relay
        .get(&support::path_of(session["login_url"].as_str().unwrap()));
    assert!(
        again.text().contains("Already connected"),
        "{}",
        again.text()
    );
    assert!(
        !again.text().contains("chat.example.com"),
        "{}",
        again.text()
    );
}

/// What the chat was asked for (path and query) and the `Referer` it was sent, in order.
type Hits = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A stand-in chat: answers every request with a small page and records it.
fn chat() -> (FakeServer, Hits) {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let record = hits.clone();
    let server = FakeServer::start("chat", move |req| {
        record
            .lock()
            .unwrap()
            .push((req.url.clone(), req.header("referer").map(String::from)));
        FakeReply {
            status: 200,
            headers: vec![("Content-Type", "text/html; charset=utf-8".into())],
            body: b"<!DOCTYPE html><title>Chat</title><p>Back in the chat</p>".to_vec(),
        }
    });
    (server, hits)
}

#[test]
fn a_real_browser_signs_in_and_follows_the_link_back_to_the_chat() {
    let (chat, hits) = chat();
    let return_url = format!("{}/rooms/42?thread=a&b=1#latest", chat.base_url());
    let planned = Planned::new();
    let provider = oidc::OidcProvider::start(oidc::OidcConfig::with_redirect_uris(&[
        &planned.callback("corp")
    ]));
    let c = provider.config();
    let mut env = providers_env(&[(
        "corp",
        vec![
            ("KIND", "oidc".into()),
            ("CLIENT_ID", c.client_id.clone()),
            ("CLIENT_SECRET", c.client_secret.clone()),
            ("ISSUER", provider.issuer().to_string()),
            ("DISPLAY_NAME", "Corp SSO".into()),
        ],
    )]);
    env.push((
        "OAUTH_RELAY_RETURN_URL_ORIGINS".into(),
        format!("https://chat.example.com,{}", chat.base_url()),
    ));
    let broker = planned.start(&env);

    for (locale, connected, back) in [
        ("en-US", "Corp SSO connected", "Back to 127.0.0.1"),
        ("pt-BR", "Corp SSO conectado", "Voltar para 127.0.0.1"),
    ] {
        let session = broker.session(
            "corp",
            json!({ "expected_email": "ana.silva@example.com", "return_url": return_url }),
        );
        assert_eq!(session["return_url"], return_url.as_str());
        let before = hits.lock().unwrap().len();
        let end = provider
            .browser(session["login_url"].as_str().unwrap())
            .account(&oidc::OidcConfig::ana())
            .locale(locale)
            .follow_link(back)
            .run();
        // The success page, in the browser's language, with the link; nothing went to the chat
        // on its own.
        let page = end.link_page.as_ref().expect("the page the link was on");
        assert!(page.url.starts_with(&broker.public), "{}", page.url);
        assert_eq!(page.status, Some(200));
        assert!(page.text.contains(connected), "{}", page.text);
        assert!(page.text.contains(back), "{}", page.text);
        // Then the click: the browser is at the return URL, fragment and all.
        assert_eq!(end.outcome, "followed_link");
        assert_eq!(end.url, return_url);
        assert_eq!(end.status, Some(200));
        assert!(end.text.contains("Back in the chat"), "{}", end.text);
        assert_eq!(
            end.navigations.last().map(String::as_str),
            Some(return_url.split('#').next().unwrap())
        );
        let hits = hits.lock().unwrap();
        assert_eq!(hits.len(), before + 1, "{hits:?}");
        // The chat learns nothing of the sign-in: no Referer (the callback URL has the code).
        assert_eq!(
            hits[before],
            ("/rooms/42?thread=a&b=1".to_string(), None),
            "{hits:?}"
        );
        drop(hits);
        assert_eq!(broker.token(&session).status, 200);
    }
}

/// Two replicas on one Redis: the return URL travels with the session from the replica that
/// took it to the one the callback lands on; a replica that does not allow its origin (an
/// operator who removed it, or a rollout half done) shows the success page without the link.
#[test]
fn the_link_survives_redis_and_is_checked_again_by_the_replica_that_shows_it() {
    let redis = support::RedisServer::start();
    let public_port = support::free_port();
    let public = format!("http://127.0.0.1:{public_port}");
    let fake = FakeMicrosoft::start_with(FakeConfig {
        redirect_uris: vec![format!("{public}/m365/callback")],
        ..FakeConfig::default()
    });
    let (base, url) = (fake.base_url(), redis.url());
    let env = |origins: &'static str| {
        vec![
            ("OAUTH_RELAY_REDIS_URL", url.clone()),
            (
                "OAUTH_RELAY_ENCRYPTION_KEY",
                "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
            ),
            ("WK_PUBLIC_BASE_URL", public.clone()),
            ("WK_M365_CLIENT_ID", "test-client-id".into()),
            ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID.into()),
            ("WK_M365_BROKER_TOKEN", BROKER_TOKEN.into()),
            ("WK_M365_LOGIN_BASE_URL", base.clone()),
            ("WK_M365_GRAPH_BASE_URL", base.clone()),
            ("OAUTH_RELAY_RETURN_URL_ORIGINS", origins.into()),
        ]
    };
    let start = |port: Option<u16>, origins: &'static str| {
        let vars = env(origins);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let port = port.map(|p| p.to_string());
        let args: Vec<&str> = port.iter().flat_map(|p| ["--port", p.as_str()]).collect();
        let relay = support::Relay::start_env(&args, &vars);
        support::eventually("the replica to be ready", || {
            (relay.get("/ready").status == 200).then_some(())
        });
        relay
    };
    let allows = start(Some(public_port), CHAT);
    let other = start(None, "https://teams.example.com");
    let auth = format!("Bearer {BROKER_TOKEN}");
    let create = || {
        let res = allows.request(
            "POST",
            "/m365/sessions",
            &[("Authorization", &auth)],
            json!({ "expected_email": EMAIL, "return_url": RETURN_URL })
                .to_string()
                .as_bytes(),
        );
        assert_eq!(res.status, 200, "{}", res.text());
        res.json()
    };
    let callback = |session: &Value| {
        let res = allows.get(&support::path_of(session["login_url"].as_str().unwrap()));
        assert_eq!(res.status, 302, "{}", res.text());
        let res = get_url(res.header("Location").unwrap());
        assert_eq!(res.status, 302, "{}", res.text());
        support::path_of(res.header("Location").unwrap())
    };
    let session = create();
    assert_eq!(
        other
            .get_auth(
                &format!("/status/{}", session["state"].as_str().unwrap()),
                BROKER_TOKEN
            )
            .json()["return_url"],
        RETURN_URL
    );
    let page = other.get(&callback(&session));
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("Microsoft 365 connected"));
    assert!(!page.text().contains("chat.example.com"), "{}", page.text());

    let session = create();
    let page = allows.get(&callback(&session));
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains(&format!(
            "<a href=\"{ESCAPED}\" rel=\"noopener noreferrer\">Back to chat.example.com</a>"
        )),
        "{}",
        page.text()
    );
}

#[test]
fn the_login_link_command_passes_the_return_url() {
    let s = setup(Some(CHAT), |_| {});
    let run = |url: &str| {
        std::process::Command::new(support::BIN)
            .args(["login-link", EMAIL, "--return-url", url])
            .env("WK_CALLBACK_SERVER", s.broker.relay.url(""))
            .env("WK_M365_BROKER_TOKEN", BROKER_TOKEN)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(RETURN_URL);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("return_url: {RETURN_URL}")),
        "{stdout}"
    );
    let out = run("https://chat.example.com.evil.test/");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("return_url"), "{stderr}");
}
