//! A real OpenID Provider for tests: node-oidc-provider (tests/support/oidc-provider/server.mjs)
//! on 127.0.0.1 and a free port, stopped on Drop, and a real headless Chromium
//! (tests/support/oidc-provider/browse.mjs) that follows a link through the provider's login and
//! consent pages. `npm ci` in tests/support/oidc-provider (scripts/test.sh runs it) installs both.
//!
//! The provider: issuer `http://127.0.0.1:PORT`, one confidential client (client_secret_basic or
//! client_secret_post), `code` flow with PKCE S256 required, scopes `openid`, `email`
//! (`email`, `email_verified`) and `offline_access` (a refresh token), RFC 9207 `iss` in the
//! authorization response, RS256 keys that `rotate_keys` and `drop_old_keys` change at run time,
//! fixed accounts whose passwords its login page checks, and on demand
//! (`OidcConfig::rotate_refresh_tokens`) refresh tokens rotated on every use with reuse detection.
//!
//! Self-contained (std and serde_json): `support::oidc`.
#![allow(dead_code)] // each test crate uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Bounds on waiting for node and Chromium: they only keep a broken setup from hanging CI.
const START_BOUND: Duration = Duration::from_secs(60);
const BROWSE_BOUND: Duration = Duration::from_secs(180);

/// The Node project with server.mjs, browse.mjs and their node_modules.
pub fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/oidc-provider")
}

/// A person who can sign in at the provider.
#[derive(Clone, Debug)]
pub struct OidcAccount {
    /// The account id: the `sub` claim. The login form takes it or the email.
    pub id: String,
    pub email: String,
    pub email_verified: bool,
    pub password: String,
}

impl OidcAccount {
    /// An account with a verified email and the password `{id}-password`.
    pub fn new(id: &str, email: &str) -> OidcAccount {
        OidcAccount {
            id: id.into(),
            email: email.into(),
            email_verified: true,
            password: format!("{id}-password"),
        }
    }

    pub fn unverified(mut self) -> OidcAccount {
        self.email_verified = false;
        self
    }
}

/// The provider's settings, fixed at start.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Registered redirect URIs (exact match at /auth and /token).
    pub redirect_uris: Vec<String>,
    /// The registered method, `client_secret_basic` (default) or `client_secret_post`; either
    /// is accepted at /token.
    pub token_endpoint_auth_method: String,
    /// Who can sign in. Default: [`OidcConfig::ana`] and [`OidcConfig::bob`].
    pub accounts: Vec<OidcAccount>,
    /// `email` and `email_verified` in the id_token (true, as Google and Entra ID do), or only
    /// at the userinfo endpoint (false, oidc-provider's default).
    pub id_token_claims: bool,
    /// OpenID Connect Core's rule: `offline_access` only with `prompt=consent` (Google's, and
    /// oidc-provider's default). False (default): `offline_access` with no `prompt` is granted on
    /// the consent page, as Entra ID does.
    pub strict_offline_access: bool,
    /// Lifetimes in seconds by oidc-provider artifact name (`AccessToken`, `AuthorizationCode`,
    /// `IdToken`, `RefreshToken`, ...), over the defaults (1 hour; codes 60 s).
    pub ttl: Vec<(String, u64)>,
    /// RFC 8707 resource indicators it issues JWT access tokens (RFC 9068) for: (resource URL,
    /// its space-separated scopes). A request naming another resource is refused.
    pub resource_servers: Vec<(String, String)>,
    /// `rotateRefreshToken: true`: a new refresh token on every use, and a used one presented
    /// again revokes the whole grant (oidc-provider's reuse detection; server.mjs says exactly
    /// what it does). False (default): oidc-provider's own rule, which for this confidential
    /// client keeps the refresh token until 70% of its life is gone.
    pub rotate_refresh_tokens: bool,
}

impl OidcConfig {
    pub fn ana() -> OidcAccount {
        OidcAccount::new("ana", "ana.silva@example.com")
    }

    pub fn bob() -> OidcAccount {
        OidcAccount::new("bob", "bob.jones@example.com")
    }

    /// The default config with these redirect URIs.
    pub fn with_redirect_uris(uris: &[&str]) -> OidcConfig {
        OidcConfig {
            redirect_uris: uris.iter().map(|u| u.to_string()).collect(),
            ..OidcConfig::default()
        }
    }

    fn to_json(&self) -> Value {
        let accounts: Vec<Value> = self
            .accounts
            .iter()
            .map(|a| {
                json!({
                    "id": a.id,
                    "email": a.email,
                    "email_verified": a.email_verified,
                    "password": a.password,
                })
            })
            .collect();
        let ttl: serde_json::Map<String, Value> = self
            .ttl
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "client": {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "redirect_uris": self.redirect_uris,
                "token_endpoint_auth_method": self.token_endpoint_auth_method,
            },
            "accounts": accounts,
            "id_token_claims": self.id_token_claims,
            "strict_offline_access": self.strict_offline_access,
            "ttl": ttl,
            "resource_servers": self
                .resource_servers
                .iter()
                .map(|(url, scope)| (url.clone(), json!({ "scope": scope })))
                .collect::<serde_json::Map<String, Value>>(),
            "rotate_refresh_tokens": self.rotate_refresh_tokens,
        })
    }
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            client_id: "test-client".into(),
            client_secret: "test-client-secret-0123456789".into(),
            redirect_uris: vec!["http://127.0.0.1/callback".into()],
            token_endpoint_auth_method: "client_secret_basic".into(),
            accounts: vec![OidcConfig::ana(), OidcConfig::bob()],
            id_token_claims: true,
            strict_offline_access: false,
            ttl: Vec::new(),
            resource_servers: Vec::new(),
            rotate_refresh_tokens: false,
        }
    }
}

/// A running node-oidc-provider, with its log (stderr, and stdout lines other than the
/// `listening` one) captured. Stopped on Drop; it also stops when this process dies (its stdin
/// closes).
pub struct OidcProvider {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
    admin: String,
    config: OidcConfig,
    logs: Arc<Mutex<Vec<String>>>,
}

impl OidcProvider {
    /// Starts the provider on 127.0.0.1 and a free port and waits for it to listen.
    pub fn start(config: OidcConfig) -> OidcProvider {
        let dir = harness_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{}/node_modules is missing: run scripts/test.sh (it runs `npm ci` there)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("OIDC_PROVIDER_CONFIG", config.to_json().to_string())
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node is not installed: install Node.js 20.12 or later and npm");
        let stdin = child.stdin.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) if v["event"] == "listening" => {
                            let _ = tx.send(v);
                        }
                        _ => logs.lock().unwrap().push(line),
                    }
                }
            });
        }
        {
            let logs = logs.clone();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let listening = match rx.recv_timeout(START_BOUND) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "oidc-provider did not start; its log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        OidcProvider {
            child,
            _stdin: stdin,
            issuer: listening["issuer"].as_str().unwrap().to_string(),
            admin: listening["admin"].as_str().unwrap().to_string(),
            config,
            logs,
        }
    }

    /// `http://127.0.0.1:PORT`, exactly as in discovery, `iss` claims and `iss` parameters.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    /// The endpoints discovery lists (oidc-provider's default routes).
    pub fn authorization_endpoint(&self) -> String {
        self.url("/auth")
    }

    pub fn token_endpoint(&self) -> String {
        self.url("/token")
    }

    pub fn jwks_uri(&self) -> String {
        self.url("/jwks")
    }

    pub fn userinfo_endpoint(&self) -> String {
        self.url("/me")
    }

    /// A new RS256 key signs from now on; the previous keys stay in the JWKS. Returns the new
    /// key's `kid`.
    pub fn rotate_keys(&self) -> String {
        self.admin("POST", "/rotate")["signing_kid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The JWKS keeps only the signing key.
    pub fn drop_old_keys(&self) {
        self.admin("POST", "/drop-old-keys");
    }

    /// The `kid` that signs now, and every published `kid` (signing key first).
    pub fn signing_kid(&self) -> String {
        self.stats()["signing_kid"].as_str().unwrap().to_string()
    }

    pub fn kids(&self) -> Vec<String> {
        self.stats()["kids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    }

    /// `{"requests": {"discovery": n, "jwks": n, "authorization": n, "token": n, "userinfo": n,
    /// "interaction": n, "other": n}, "logins": [account ids], "failed_logins": [typed logins],
    /// "refresh_grants", "refresh_grant_errors", "grants_revoked", "refresh_presentations":
    /// {token hash: n}, "signing_kid", "kids"}` (a request name is absent until it has been
    /// requested).
    pub fn stats(&self) -> Value {
        self.admin("GET", "/stats")
    }

    /// How many requests an endpoint (a name in [`OidcProvider::stats`]) has had.
    pub fn requests(&self, endpoint: &str) -> u64 {
        self.stats()["requests"][endpoint].as_u64().unwrap_or(0)
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.requests("jwks")
    }

    /// `grant_type=refresh_token` requests answered with tokens.
    pub fn refresh_grants(&self) -> u64 {
        self.stats()["refresh_grants"].as_u64().unwrap()
    }

    /// `grant_type=refresh_token` requests refused.
    pub fn refresh_grant_errors(&self) -> u64 {
        self.stats()["refresh_grant_errors"].as_u64().unwrap()
    }

    /// Grants revoked by the provider (a reused refresh token, a code redeemed twice).
    pub fn grants_revoked(&self) -> u64 {
        self.stats()["grants_revoked"].as_u64().unwrap()
    }

    /// The most times one refresh token was presented (0 before any).
    pub fn max_refresh_presentations(&self) -> u64 {
        let stats = self.stats();
        let counts = stats["refresh_presentations"].as_object().unwrap();
        counts.values().filter_map(Value::as_u64).max().unwrap_or(0)
    }

    /// Account ids that signed in, in order.
    pub fn logins(&self) -> Vec<String> {
        strings(&self.stats()["logins"])
    }

    /// What was typed in the login field each time the login or password was wrong.
    pub fn failed_logins(&self) -> Vec<String> {
        strings(&self.stats()["failed_logins"])
    }

    pub fn reset_stats(&self) {
        self.admin("POST", "/reset-stats");
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    fn admin(&self, method: &str, path: &str) -> Value {
        let addr = self.admin.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(addr).expect("connect to the oidc-provider admin port");
        stream.set_read_timeout(Some(START_BOUND)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{method} {path}: {head}");
        serde_json::from_str(body).unwrap()
    }

    /// A browser that opens `url` (a login link, or an authorization URL) and goes through this
    /// provider's pages. Configure it, then [`Browser::run`].
    pub fn browser(&self, url: &str) -> Browser<'_> {
        Browser {
            provider: self,
            input: json!({ "url": url, "issuer": self.issuer }),
        }
    }

    /// Opens `url`, signs in as `account`, accepts the consent and follows the redirect out.
    pub fn sign_in(&self, url: &str, account: &OidcAccount) -> BrowseResult {
        self.browser(url).account(account).run()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// What the browser does on the login page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLogin {
    /// Types the login and password and presses Sign-in (the default).
    Submit,
    /// Follows the page's `[ Cancel ]` link: back to the client with `error=access_denied`.
    Cancel,
    /// Stops there (the result is the login page).
    Stop,
}

/// What the browser does on the consent page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConsent {
    /// Presses Continue (the default).
    Accept,
    /// Refuses: follows the page's `[ Cancel ]` link, so the provider redirects back with
    /// `error=access_denied`.
    Refuse,
    /// Stops there (the result is the consent page).
    Stop,
}

/// One run of headless Chromium through the provider's pages (a fresh profile each time, so no
/// session is remembered between runs).
pub struct Browser<'a> {
    provider: &'a OidcProvider,
    input: Value,
}

impl Browser<'_> {
    /// Signs in with this account's id and password.
    pub fn account(self, account: &OidcAccount) -> Self {
        self.login(&account.id, &account.password)
    }

    /// Types these in the login form (`login`: an account id or email).
    pub fn login(mut self, login: &str, password: &str) -> Self {
        self.input["login"] = json!(login);
        self.input["password"] = json!(password);
        self
    }

    pub fn on_login(mut self, action: OnLogin) -> Self {
        self.input["on_login"] = json!(match action {
            OnLogin::Submit => "submit",
            OnLogin::Cancel => "cancel",
            OnLogin::Stop => "stop",
        });
        self
    }

    pub fn on_consent(mut self, action: OnConsent) -> Self {
        self.input["on_consent"] = json!(match action {
            OnConsent::Accept => "accept",
            OnConsent::Refuse => "refuse",
            OnConsent::Stop => "stop",
        });
        self
    }

    /// The person refuses the consent.
    pub fn refuse_consent(self) -> Self {
        self.on_consent(OnConsent::Refuse)
    }

    /// Once out of the provider, clicks the link whose text is exactly `text` (as a person
    /// would); the result is the page it led to, and [`BrowseResult::link_page`] the page the
    /// link was on.
    pub fn follow_link(mut self, text: &str) -> Self {
        self.input["follow_link"] = json!(text);
        self
    }

    /// The browser's language (its Accept-Language), e.g. `pt-BR`.
    pub fn locale(mut self, locale: &str) -> Self {
        self.input["locale"] = json!(locale);
        self
    }

    /// After this run (and any before it), `step` in the same browser, its cookies kept: the
    /// result's [`BrowseResult::then`] has one entry per step, in order.
    pub fn then(mut self, step: Step) -> Self {
        if !self.input["then"].is_array() {
            self.input["then"] = json!([]);
        }
        self.input["then"].as_array_mut().unwrap().push(step.0);
        self
    }

    /// Runs Chromium; fails the test if it cannot (never skips: scripts/test.sh installs it).
    pub fn run(self) -> BrowseResult {
        let mut child = Command::new("node")
            .arg("browse.mjs")
            .arg(self.input.to_string())
            .current_dir(harness_dir())
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node is not installed: install Node.js 20.12 or later and npm");
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + BROWSE_BOUND;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        let provider_log = || self.provider.logs().join("\n");
        let Some(status) = status else {
            panic!(
                "the browser did not finish: {out}\n{err}\nprovider log:\n{}",
                provider_log()
            );
        };
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!(
                "browse.mjs printed no result ({e}): {out}\n{err}\nprovider log:\n{}",
                provider_log()
            )
        });
        if !status.success() || v.get("error").is_some() {
            panic!(
                "the browser failed: {}\n{err}\nprovider log:\n{}",
                v["error"].as_str().unwrap_or(&out),
                provider_log()
            );
        }
        BrowseResult::from_json(&v)
    }
}

/// A further run in the same browser ([`Browser::then`]): open a URL, or go back to the provider
/// page where an earlier run stopped, and act on the provider's pages.
#[derive(Clone, Debug)]
pub struct Step(Value);

impl Step {
    pub fn open(url: &str) -> Step {
        Step(json!({ "url": url }))
    }

    /// Back to the provider page where run `run` stopped (0: the first run, 1: the first step,
    /// ...), which must have stopped there ([`OnLogin::Stop`], [`OnConsent::Stop`]).
    pub fn resume(run: usize) -> Step {
        Step(json!({ "resume": run }))
    }

    pub fn account(mut self, account: &OidcAccount) -> Step {
        self.0["login"] = json!(account.id);
        self.0["password"] = json!(account.password);
        self
    }

    pub fn on_login(mut self, action: OnLogin) -> Step {
        self.0["on_login"] = json!(match action {
            OnLogin::Submit => "submit",
            OnLogin::Cancel => "cancel",
            OnLogin::Stop => "stop",
        });
        self
    }
}

/// A cookie the browser holds.
#[derive(Clone, Debug)]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    pub secure: bool,
    pub http_only: bool,
    /// `Strict`, `Lax` or `None`.
    pub same_site: String,
    /// Unix seconds; -1 for a session cookie.
    pub expires: f64,
}

/// Where the browser ended and what it saw on the way.
#[derive(Clone, Debug)]
pub struct BrowseResult {
    /// The URL of the last page (the redirect URI with its query, or the page it led to).
    pub url: String,
    /// The HTTP status of the last page (None if it was not loaded over HTTP).
    pub status: Option<u16>,
    pub title: String,
    /// The last page's visible text.
    pub text: String,
    /// The last page's DOM.
    pub html: String,
    /// The provider pages the browser acted on or stopped at, in order.
    pub pages: Vec<ProviderPage>,
    /// Every top-level request, redirects included, in order.
    pub navigations: Vec<String>,
    /// `left_provider` (followed the redirect out of the provider), `login_failed` (the login
    /// page came back saying the login or password was wrong), `stopped` (OnLogin::Stop or
    /// OnConsent::Stop), `unknown_page` (a provider page with neither form), `followed_link`
    /// (then clicked the link of [`Browser::follow_link`]).
    pub outcome: String,
    /// With [`Browser::follow_link`]: the page the link was on.
    pub link_page: Option<LinkPage>,
    /// The browser's cookies when this run ended (every host's: here all are 127.0.0.1).
    pub cookies: Vec<BrowserCookie>,
    /// With [`Browser::then`]: each further run, in order (their `html` is left empty).
    pub then: Vec<BrowseResult>,
}

/// The page a followed link was on.
#[derive(Clone, Debug)]
pub struct LinkPage {
    pub url: String,
    pub status: Option<u16>,
    pub text: String,
    pub html: String,
}

/// A login or consent page of the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderPage {
    /// `login`, `consent` or `unknown`.
    pub page: String,
    pub url: String,
    /// The page said "Invalid login or password." (after a wrong password).
    pub login_error: bool,
}

impl BrowseResult {
    fn from_json(v: &Value) -> BrowseResult {
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        BrowseResult {
            url: text("url"),
            status: v["status"].as_u64().map(|s| s as u16),
            title: text("title"),
            text: text("text"),
            html: text("html"),
            pages: v["pages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| ProviderPage {
                    page: p["page"].as_str().unwrap().to_string(),
                    url: p["url"].as_str().unwrap().to_string(),
                    login_error: p["login_error"].as_bool().unwrap(),
                })
                .collect(),
            navigations: strings(&v["navigations"]),
            outcome: text("outcome"),
            link_page: v.get("link_page").map(|p| LinkPage {
                url: p["url"].as_str().unwrap_or_default().to_string(),
                status: p["status"].as_u64().map(|s| s as u16),
                text: p["text"].as_str().unwrap_or_default().to_string(),
                html: p["html"].as_str().unwrap_or_default().to_string(),
            }),
            cookies: v["cookies"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|c| {
                            let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                            BrowserCookie {
                                name: text("name"),
                                value: text("value"),
                                domain: text("domain"),
                                path: text("path"),
                                secure: c["secure"].as_bool().unwrap_or(false),
                                http_only: c["httpOnly"].as_bool().unwrap_or(false),
                                same_site: text("sameSite"),
                                expires: c["expires"].as_f64().unwrap_or(-1.0),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
            then: v["then"]
                .as_array()
                .map(|runs| runs.iter().map(BrowseResult::from_json).collect())
                .unwrap_or_default(),
        }
    }

    /// The cookies whose name starts with `prefix`.
    pub fn cookies_named(&self, prefix: &str) -> Vec<&BrowserCookie> {
        self.cookies
            .iter()
            .filter(|c| c.name.starts_with(prefix))
            .collect()
    }

    /// The kinds of provider pages seen, in order (`["login", "consent"]`).
    pub fn page_kinds(&self) -> Vec<&str> {
        self.pages.iter().map(|p| p.page.as_str()).collect()
    }

    /// A query parameter of the final URL, percent-decoded (`code`, `state`, `iss`, `error`).
    pub fn param(&self, name: &str) -> Option<String> {
        query_param(&self.url, name)
    }
}

/// A query parameter of a URL, percent-decoded (`+` is a space).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1.split('#').next().unwrap();
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `application/x-www-form-urlencoded` encoding of one value (unreserved characters kept).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
