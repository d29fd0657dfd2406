//! The broker test set-up every provider's tests share: start the real binary in broker mode
//! with providers' variables (its public URL known first, so fakes can register the redirect
//! URI), create a session, open the link, bring the provider's redirect back, take the tokens,
//! and the checks every provider must pass (the tokens once, the page naming the provider, a
//! failure closed with its reason). A provider adds its fake and a test file, not a copy of
//! this.
#![allow(dead_code)] // each test crate uses a different subset

use super::{path_of, HttpResponse, Relay};
use serde_json::{json, Value};

pub const BROKER_TOKEN: &str = "broker-token-0123456789abcdef";

/// A broker about to start: its port and public URL are fixed first, because the providers
/// must know the redirect URIs before the broker does.
pub struct Planned {
    pub port: u16,
    pub public: String,
}

impl Default for Planned {
    fn default() -> Self {
        Planned::new()
    }
}

impl Planned {
    pub fn new() -> Planned {
        let port = super::free_port();
        Planned {
            port,
            public: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The redirect URI of the provider `name` (`{public}/login/{name}/callback`).
    pub fn callback(&self, name: &str) -> String {
        format!("{}/login/{name}/callback", self.public)
    }

    /// Starts the broker with the public URL and broker token (the general names) and `env`.
    pub fn start(self, env: &[(String, String)]) -> Broker {
        self.start_named("OAUTH_RELAY_PUBLIC_URL", "OAUTH_RELAY_BROKER_TOKEN", env)
    }

    /// The same with the Workit names of the public URL and broker token.
    pub fn start_wk(self, env: &[(String, String)]) -> Broker {
        self.start_named("WK_PUBLIC_BASE_URL", "WK_M365_BROKER_TOKEN", env)
    }

    fn start_named(self, public_var: &str, token_var: &str, env: &[(String, String)]) -> Broker {
        let mut vars: Vec<(&str, &str)> =
            vec![(public_var, &self.public), (token_var, BROKER_TOKEN)];
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k, v));
        }
        let port = self.port.to_string();
        let relay = Relay::start_env(&["--port", &port], &vars);
        Broker {
            relay,
            public: self.public,
        }
    }
}

/// `OAUTH_RELAY_PROVIDER_<NAME>_<SETTING>` for one provider's settings.
pub fn provider_vars(name: &str, settings: &[(&str, &str)]) -> Vec<(String, String)> {
    let prefix = format!(
        "OAUTH_RELAY_PROVIDER_{}_",
        name.to_ascii_uppercase().replace('-', "_")
    );
    settings
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.to_string()))
        .collect()
}

/// `OAUTH_RELAY_PROVIDERS` and the providers' variables: `(name, settings)` pairs.
pub fn providers_env(providers: &[(&str, Vec<(&str, String)>)]) -> Vec<(String, String)> {
    let names: Vec<&str> = providers.iter().map(|(n, _)| *n).collect();
    let mut env = vec![("OAUTH_RELAY_PROVIDERS".to_string(), names.join(","))];
    for (name, settings) in providers {
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend(provider_vars(name, &settings));
    }
    env
}

/// A running broker.
pub struct Broker {
    pub relay: Relay,
    pub public: String,
}

fn auth() -> String {
    format!("Bearer {BROKER_TOKEN}")
}

impl Broker {
    /// POSTs a session body to `path` (`/sessions` or `/m365/sessions`) with the broker token.
    pub fn create(&self, path: &str, body: &Value) -> HttpResponse {
        let auth = auth();
        self.relay.request(
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    }

    /// A session of `provider` (POST /sessions) for `who` (`expected_email` and/or
    /// `expected_subject`, and any other fields); it must be created.
    pub fn session(&self, provider: &str, who: Value) -> Value {
        let mut body = who;
        body["provider"] = json!(provider);
        let res = self.create("/sessions", &body);
        assert_eq!(res.status, 200, "{}", res.text());
        let session = res.json();
        assert_eq!(session["provider"], provider);
        let link = session["login_url"].as_str().unwrap();
        assert!(
            link.starts_with(&format!("{}/login/", self.public)),
            "{link}"
        );
        session
    }

    /// Opens the login link as a browser would: the authorize URL it redirects to.
    pub fn open(&self, session: &Value) -> String {
        let res = self
            .relay
            .get(&path_of(session["login_url"].as_str().unwrap()));
        assert_eq!(res.status, 302, "{}", res.text());
        res.header("Location").unwrap().to_string()
    }

    /// Brings the provider's redirect (an absolute URL to this broker) back, as the browser.
    pub fn arrive(&self, redirect: &str) -> HttpResponse {
        self.arrive_in(redirect, None)
    }

    /// The same, with an `Accept-Language`.
    pub fn arrive_in(&self, redirect: &str, lang: Option<&str>) -> HttpResponse {
        assert!(
            redirect.starts_with(&self.public),
            "the provider redirected elsewhere: {redirect}"
        );
        let headers: Vec<(&str, &str)> = lang.iter().map(|l| ("Accept-Language", *l)).collect();
        self.relay.request("GET", &path_of(redirect), &headers, b"")
    }

    /// Opens the link, lets `browse` take the authorize URL to the provider's redirect, and
    /// brings that back: the page the person ends on.
    pub fn sign_in(&self, session: &Value, browse: impl FnOnce(&str) -> String) -> HttpResponse {
        let authorize = self.open(session);
        let redirect = browse(&authorize);
        self.arrive(&redirect)
    }

    pub fn token(&self, session: &Value) -> HttpResponse {
        let path = format!("/token/{}", session["state"].as_str().unwrap());
        self.relay.get_auth(&path, BROKER_TOKEN)
    }

    pub fn status(&self, session: &Value) -> Value {
        let path = format!("/status/{}", session["state"].as_str().unwrap());
        self.relay.get_auth(&path, BROKER_TOKEN).json()
    }

    /// What every successful sign-in must look like: the page names the provider and shows no
    /// secret, the tokens come out once (then 410) and name the provider. Returns the tokens.
    pub fn assert_connected(&self, session: &Value, page: &HttpResponse, connected: &str) -> Value {
        assert_eq!(page.status, 200, "{}", page.text());
        assert!(page.text().contains(connected), "{}", page.text());
        assert_eq!(page.header("Cache-Control"), Some("no-store"));
        assert_eq!(self.status(session)["status"], "ready");
        let tokens = self.token(session);
        assert_eq!(tokens.status, 200, "{}", tokens.text());
        let t = tokens.json();
        assert_eq!(t["provider"], session["provider"]);
        assert!(t["access_token"].as_str().is_some_and(|a| !a.is_empty()));
        assert!(t["subject"].as_str().is_some_and(|s| !s.is_empty()), "{t}");
        let text = page.text();
        for secret in [
            t["access_token"].as_str(),
            t["refresh_token"].as_str(),
            t["id_token"].as_str(),
            session["state"].as_str(),
        ]
        .into_iter()
        .flatten()
        {
            assert!(!text.contains(secret), "a secret on the page");
        }
        assert_eq!(self.token(session).status, 410);
        assert_eq!(self.status(session)["status"], "consumed");
        t
    }

    /// What every failed sign-in must look like: the page (status, words, no-store), the
    /// reason in /status and /token (409), and a `callback_failed` audit line with it.
    pub fn assert_failed(
        &self,
        session: &Value,
        page: &HttpResponse,
        reason: &str,
        status: u16,
        words: &str,
    ) {
        assert_eq!(page.status, status, "{reason}: {}", page.text());
        assert!(page.text().contains(words), "{reason}: {}", page.text());
        assert_eq!(page.header("Cache-Control"), Some("no-store"));
        let st = self.status(session);
        assert_eq!(
            (st["status"].as_str(), st["reason"].as_str()),
            (Some("failed"), Some(reason)),
            "{st}"
        );
        let token = self.token(session);
        assert_eq!(
            (token.status, token.json()["reason"].as_str()),
            (409, Some(reason))
        );
        let line = self.relay.wait_for_log(&format!("\"reason\":\"{reason}\""));
        assert!(line.contains("callback_failed"), "{line}");
    }

    /// The session's audit line of `event` (the session appears as a hash of its handle),
    /// e.g. `callback_failed` with its operator-only `detail` and `fix`.
    pub fn audit_line(&self, session: &Value, event: &str) -> Value {
        let hash = short_hash(session["state"].as_str().unwrap());
        let line = super::eventually(&format!("{event} for session {hash}"), || {
            self.relay.logs().into_iter().find(|l| {
                l.contains(&format!("\"event\":\"{event}\""))
                    && l.contains(&format!("\"session\":\"{hash}\""))
            })
        });
        serde_json::from_str(&line).unwrap()
    }
}

/// The relay's log hash of a handle: the first 6 bytes of SHA-256, in hex.
pub fn short_hash(value: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, value.as_bytes()).as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A stand-in for the broker's public URL that answers every request with a small page and
/// records its target: where a provider's redirect lands when a test wants to hold it, alter it
/// (drop or change `iss`, bring it to another provider's callback) and deliver it to the broker
/// itself with `Broker::arrive`.
pub struct Catcher {
    pub url: String,
    caught: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Default for Catcher {
    fn default() -> Self {
        Catcher::start()
    }
}

impl Catcher {
    pub fn start() -> Catcher {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let caught = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = caught.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                if let Some(target) = head.split(' ').nth(1) {
                    record.lock().unwrap().push(target.to_string());
                }
                let body = "<!DOCTYPE html><title>Caught</title><p>Caught the redirect</p>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Catcher { url, caught }
    }

    /// A broker whose public URL is this catcher: it listens elsewhere.
    pub fn plan(&self) -> Planned {
        Planned {
            port: super::free_port(),
            public: self.url.clone(),
        }
    }

    /// The absolute URLs caught so far, oldest first.
    pub fn caught(&self) -> Vec<String> {
        self.caught
            .lock()
            .unwrap()
            .iter()
            .map(|target| format!("{}{target}", self.url))
            .collect()
    }
}

/// `url` with the query parameter `name` removed (`None`) or set to `value`.
pub fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != name {
            out.append_pair(&k, &v);
        }
    }
    if let Some(v) = value {
        out.append_pair(name, v);
    }
    format!("{base}?{}", out.finish())
}

/// Runs `oauth-relay` with `env` only and expects it to refuse to start (exit 1): its stderr.
/// A relay that starts after all is killed and fails the test.
pub fn start_up_fails(env: &[(String, String)]) -> String {
    let mut child = super::oauth_relay(&["--host", "127.0.0.1", "--port", "0"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("it started: {}", reader.join().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap();
    assert!(
        !stderr.contains("\"event\":\"listening\""),
        "it started: {stderr}"
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}
