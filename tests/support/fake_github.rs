//! A fake GitHub (OAuth 2.0, not OpenID Connect) on one plain-HTTP port: the web flow
//! (`GET /login/oauth/authorize`, `POST /login/oauth/access_token`) and the REST API
//! (`GET /user`, `GET /user/emails`, under a configurable prefix such as GitHub Enterprise's
//! `/api/v3`). It enforces what GitHub enforces and answers the way GitHub answers:
//!
//! - authorize: an unknown `client_id` gets a 404 page; a `redirect_uri` other than the
//!   registered callback URL is sent back to the *registered* callback with
//!   `error=redirect_uri_mismatch` (GitHub's documented behaviour); a refusal comes back as
//!   `error=access_denied`; PKCE is S256 only. Stricter than GitHub, on purpose and switchable:
//!   the redirect URI must match byte for byte (GitHub accepts sub-paths of the callback URL),
//!   and `state` and PKCE are required by default (GitHub recommends both, requires neither).
//! - token: client authentication (form or HTTP Basic), codes that are one-time, expire after
//!   10 minutes, and are bound to the client, the redirect URI and the PKCE challenge. The
//!   answer is form-encoded unless `Accept: application/json` asks for JSON, and every error
//!   is HTTP 200 with `error`, `error_description`, `error_uri` (GitHub's quirk). OAuth-app
//!   tokens never expire and come without a refresh token; `github_app` emulates a GitHub App
//!   with expiring user tokens (`expires_in`, `refresh_token`, `refresh_token_expires_in`).
//! - API: a `User-Agent` header is required (403 otherwise); `Authorization: Bearer` or
//!   `token`; `401 Bad credentials` for an unknown token; `/user`'s `email` is the *public*
//!   address (often `null`); `/user/emails` needs the `user:email` (or `user`) scope and
//!   answers 404 without it, as GitHub does.
//!
//! The person signing in: fetching the authorize URL over HTTP signs in `FakeGitHubConfig::user`
//! at once (no form), and a test picks anyone with `FakeGitHub::sign_in(url, &user)` or refuses
//! with `FakeGitHub::decline(url)`. API answers read the user's *current* data
//! (`FakeGitHub::update_user`), as GitHub's API does.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// Each fake includes the HTTP core and the fake-provider core as its own modules, so a test
// crate with several fakes loads the files several times, on purpose; clippy's duplicate_mod
// skips includes that allow it.
#[allow(clippy::duplicate_mod)]
#[path = "fake_http.rs"]
mod fake_http;
use fake_http::{FakeReply, FakeRequest};
#[allow(clippy::duplicate_mod)]
#[path = "fake_provider.rs"]
mod fake_provider;
// The helpers tests use, under this fake's name (not every test crate uses them all).
#[allow(unused_imports)]
pub use fake_provider::{
    b64url_encode, param, pkce_challenge, pkce_verifier, query_params, SignInError,
};
use fake_provider::{
    html_escape, is_b64url, is_pkce_verifier, parse_basic, random_bytes, request_params,
    typed_reply, with_query, Running,
};

/// An OAuth app's client id (GitHub's look: `Ov23li` and 14 more characters).
pub const DEFAULT_CLIENT_ID: &str = "Ov23liFakeGitHub0001";
/// An OAuth app's client secret (40 hex digits, as GitHub's).
pub const DEFAULT_CLIENT_SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c";
pub const DEFAULT_REDIRECT_URI: &str = "http://localhost/callback";

const DOCS_AUTHORIZE_ERRORS: &str =
    "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/";
const DOCS_TOKEN_ERRORS: &str =
    "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/";
const DOCS_REFRESH: &str = "https://docs.github.com/apps/creating-github-apps/authenticating-with-a-github-app/refreshing-user-access-tokens";

/// One address of a user, as `GET /user/emails` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHubEmail {
    pub email: String,
    pub primary: bool,
    pub verified: bool,
    /// `Some("public")` / `Some("private")` for the primary address, `None` (JSON `null`) for
    /// the others, as GitHub reports it.
    pub visibility: Option<String>,
}

impl GitHubEmail {
    /// An address; the primary one gets visibility `private`, the others `null`.
    pub fn new(email: &str, primary: bool, verified: bool) -> GitHubEmail {
        GitHubEmail {
            email: email.into(),
            primary,
            verified,
            visibility: primary.then(|| "private".to_string()),
        }
    }
}

/// A GitHub account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHubUser {
    /// The stable numeric id (logins can be renamed; ids cannot).
    pub id: u64,
    pub login: String,
    pub name: Option<String>,
    /// The address shown on the public profile: `/user`'s `email`. `None` (JSON `null`) is the
    /// common case: most people keep their addresses private.
    pub public_email: Option<String>,
    /// Everything `/user/emails` lists, verified or not.
    pub emails: Vec<GitHubEmail>,
}

impl GitHubUser {
    /// The common case: one verified primary address, private (so `/user`'s `email` is `null`).
    pub fn new(id: u64, login: &str, primary_email: &str) -> GitHubUser {
        GitHubUser {
            id,
            login: login.into(),
            name: None,
            public_email: None,
            emails: vec![GitHubEmail::new(primary_email, true, true)],
        }
    }

    /// The primary address, verified or not.
    pub fn primary_email(&self) -> Option<&GitHubEmail> {
        self.emails.iter().find(|e| e.primary)
    }
}

/// The fake's settings. Set at start (`FakeGitHub::start_with`) or later (`FakeGitHub::set`).
#[derive(Clone, Debug)]
pub struct FakeGitHubConfig {
    pub client_id: String,
    /// Checked at the token endpoint (GitHub has no public clients: every app has a secret).
    pub client_secret: String,
    /// The app's registered callback URL; the authorize `redirect_uri`, when sent, must equal it
    /// byte for byte, and it is where the user is sent when `redirect_uri` is left out.
    pub redirect_uri: String,
    /// Who signs in when the authorize URL is fetched over HTTP (a browser).
    pub user: GitHubUser,
    /// The user refuses: the authorize endpoint fetched over HTTP redirects back with
    /// `error=access_denied` (`sign_in` is an explicit choice and ignores it; `decline` refuses).
    pub cancel: bool,
    /// The app is suspended: the authorize endpoint redirects back with
    /// `error=application_suspended`.
    pub suspended: bool,
    /// Refuse an authorize request without `state` (GitHub does not; the broker must send it).
    pub require_state: bool,
    /// Refuse an authorize request without an S256 `code_challenge` (GitHub does not yet).
    pub require_pkce: bool,
    /// Behave as a GitHub App with expiring user tokens: `ghu_` access tokens with
    /// `expires_in`, `ghr_` refresh tokens with `refresh_token_expires_in`, empty `scope`
    /// (GitHub Apps have permissions, not scopes), and `grant_type=refresh_token`.
    /// `false`: an OAuth app, whose `gho_` tokens never expire and come without a refresh token.
    pub github_app: bool,
    /// A GitHub App's "Email addresses" permission: without it `/user/emails` answers 403.
    pub app_email_permission: bool,
    /// GitHub App user tokens: 8 hours.
    pub access_token_lifetime_secs: u64,
    /// GitHub App refresh tokens: 6 months.
    pub refresh_token_lifetime_secs: u64,
    /// How long a code can be redeemed (GitHub: 10 minutes).
    pub code_lifetime: Duration,
    /// Where the REST API lives under the base URL: `""` as on api.github.com, `"/api/v3"` as on
    /// GitHub Enterprise Server.
    pub api_prefix: String,
    /// Sleep this long before answering the token endpoint.
    pub token_delay: Duration,
    /// Sleep this long before answering an API request.
    pub api_delay: Duration,
    /// Answer every token request with this `(error, error_description)` (HTTP 200, GitHub's
    /// way), before any validation; the code stays unredeemed.
    pub token_error: Option<(String, String)>,
    /// `GET /user` answers this `(status, message)`.
    pub user_error: Option<(u16, String)>,
    /// `GET /user/emails` answers this `(status, message)`.
    pub emails_error: Option<(u16, String)>,
}

impl Default for FakeGitHubConfig {
    fn default() -> Self {
        FakeGitHubConfig {
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            redirect_uri: DEFAULT_REDIRECT_URI.into(),
            user: GitHubUser {
                id: 5_830_144,
                login: "ana-silva".into(),
                name: Some("Ana Silva".into()),
                public_email: None,
                emails: vec![
                    GitHubEmail::new("ana.silva@example.com", true, true),
                    GitHubEmail::new("ana@old-job.example", false, false),
                ],
            },
            cancel: false,
            suspended: false,
            require_state: true,
            require_pkce: true,
            github_app: false,
            app_email_permission: true,
            access_token_lifetime_secs: 28_800,
            refresh_token_lifetime_secs: 15_897_600,
            code_lifetime: Duration::from_secs(600),
            api_prefix: String::new(),
            token_delay: Duration::ZERO,
            api_delay: Duration::ZERO,
            token_error: None,
            user_error: None,
            emails_error: None,
        }
    }
}

type Params = Vec<(String, String)>;

/// An API request as received, for assertions (`User-Agent`, `Accept`, the auth scheme).
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub method: String,
    /// Path and query, as sent (with the API prefix).
    pub url: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl ApiRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: Option<String>,
    scopes: Vec<String>,
    user_id: u64,
    issued: Instant,
    redeemed: bool,
}

struct AccessGrant {
    user_id: u64,
    scopes: Vec<String>,
    /// `None`: an OAuth-app token, valid until revoked.
    expires: Option<Instant>,
}

struct RefreshGrant {
    client_id: String,
    user_id: u64,
    scopes: Vec<String>,
    expires: Instant,
}

struct State {
    cfg: FakeGitHubConfig,
    /// Everyone who signed in, by id: the API reads their current data here.
    users: HashMap<u64, GitHubUser>,
    codes: HashMap<String, CodeGrant>,
    access_tokens: HashMap<String, AccessGrant>,
    refresh_tokens: HashMap<String, RefreshGrant>,
    authorize_requests: Vec<Params>,
    token_requests: Vec<Params>,
    api_requests: Vec<ApiRequest>,
    issued_codes: usize,
    redeemed_codes: usize,
    refreshes: usize,
    token_calls: usize,
    user_calls: usize,
    emails_calls: usize,
}

type Shared = fake_provider::Core<State>;

/// Who is at the keyboard when the authorize endpoint runs.
enum Who<'a> {
    /// Fetched over HTTP: `cfg.user` signs in (or refuses when `cfg.cancel`).
    Browser,
    User(&'a GitHubUser),
    Decline,
}

/// A running fake GitHub on `127.0.0.1:<free port>`; stopped (threads joined) on drop.
pub struct FakeGitHub {
    shared: Running<State>,
}

const AUTHORIZE_PATH: &str = "/login/oauth/authorize";
const TOKEN_PATH: &str = "/login/oauth/access_token";

impl FakeGitHub {
    /// Starts with `FakeGitHubConfig::default()`.
    pub fn start() -> FakeGitHub {
        FakeGitHub::start_with(FakeGitHubConfig::default())
    }

    /// Starts with `cfg`.
    pub fn start_with(cfg: FakeGitHubConfig) -> FakeGitHub {
        let state = State {
            cfg,
            users: HashMap::new(),
            codes: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            authorize_requests: Vec::new(),
            token_requests: Vec::new(),
            api_requests: Vec::new(),
            issued_codes: 0,
            redeemed_codes: 0,
            refreshes: 0,
            token_calls: 0,
            user_calls: 0,
            emails_calls: 0,
        };
        FakeGitHub {
            shared: Running::start("fake-github", state, (), handle),
        }
    }

    /// `http://127.0.0.1:PORT`: GitHub's web host (github.com).
    pub fn base_url(&self) -> String {
        self.shared.base_url()
    }

    /// `{base}/login/oauth/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.shared.base)
    }

    /// `{base}/login/oauth/access_token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.shared.base)
    }

    /// The REST API root (api.github.com): `{base}{api_prefix}`, no trailing slash.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.shared.base, self.shared.lock().cfg.api_prefix)
    }

    /// `{api}/user`.
    pub fn user_url(&self) -> String {
        format!("{}/user", self.api_url())
    }

    /// `{api}/user/emails`.
    pub fn emails_url(&self) -> String {
        format!("{}/user/emails", self.api_url())
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> FakeGitHubConfig {
        self.shared.lock().cfg.clone()
    }

    /// Changes the configuration at runtime: `fake.set(|c| c.cancel = true)`.
    pub fn set(&self, f: impl FnOnce(&mut FakeGitHubConfig)) {
        f(&mut self.shared.lock().cfg)
    }

    /// The person at `url` (an authorize URL, as the broker built it) signs in as `user`:
    /// returns the redirect the browser would follow (`redirect_uri?code=...&state=...`, or an
    /// error redirect such as `redirect_uri_mismatch`), or the page GitHub shows instead.
    pub fn sign_in(&self, url: &str, user: &GitHubUser) -> Result<String, SignInError> {
        self.visit(url, Who::User(user))
    }

    /// The person at `url` clicks "Cancel": `redirect_uri?error=access_denied&...&state=...`
    /// (or the page GitHub shows when the request itself is wrong).
    pub fn decline(&self, url: &str) -> Result<String, SignInError> {
        self.visit(url, Who::Decline)
    }

    fn visit(&self, url: &str, who: Who) -> Result<String, SignInError> {
        self.shared.visit(url, "GitHub", |path, request| {
            if path == AUTHORIZE_PATH {
                authorize(&self.shared, request, who)
            } else {
                handle(&self.shared, request)
            }
        })
    }

    /// Adds or replaces a user (by id); the API answers with their current data.
    pub fn add_user(&self, user: GitHubUser) {
        self.shared.lock().users.insert(user.id, user);
    }

    /// Changes a user's data (e.g. an address gets verified) for the API's next answers and,
    /// when it is `config().user`, for later sign-ins too; `false` if the id is unknown.
    pub fn update_user(&self, id: u64, f: impl FnOnce(&mut GitHubUser)) -> bool {
        let mut st = self.shared.lock();
        let current = match st.users.get(&id) {
            Some(u) => u.clone(),
            None if st.cfg.user.id == id => st.cfg.user.clone(),
            None => return false,
        };
        let mut updated = current;
        f(&mut updated);
        if st.cfg.user.id == id {
            st.cfg.user = updated.clone();
        }
        st.users.insert(id, updated);
        true
    }

    /// Every authorize request's query parameters, in order of arrival (HTTP and `sign_in`).
    pub fn authorize_requests(&self) -> Vec<Vec<(String, String)>> {
        self.shared.lock().authorize_requests.clone()
    }

    /// Every token request's parameters (query and body; secrets and verifiers included).
    pub fn token_requests(&self) -> Vec<Vec<(String, String)>> {
        self.shared.lock().token_requests.clone()
    }

    /// Every API request (any path), in order.
    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.shared.lock().api_requests.clone()
    }

    /// Codes issued by the authorize endpoint.
    pub fn issued_codes(&self) -> usize {
        self.shared.lock().issued_codes
    }

    /// Codes successfully redeemed.
    pub fn redeemed_codes(&self) -> usize {
        self.shared.lock().redeemed_codes
    }

    /// Successful `grant_type=refresh_token` requests (GitHub App mode).
    pub fn refreshes(&self) -> usize {
        self.shared.lock().refreshes
    }

    /// Requests to the token endpoint (any outcome).
    pub fn token_calls(&self) -> usize {
        self.shared.lock().token_calls
    }

    /// Requests to `/user` (any outcome).
    pub fn user_calls(&self) -> usize {
        self.shared.lock().user_calls
    }

    /// Requests to `/user/emails` (any outcome).
    pub fn emails_calls(&self) -> usize {
        self.shared.lock().emails_calls
    }

    /// Makes every access token issued so far invalid (the user revoked the app): the API
    /// answers `401 Bad credentials`.
    pub fn revoke_access_tokens(&self) {
        self.shared.lock().access_tokens.clear();
    }

    /// Makes every access token issued so far expired (GitHub App tokens expire; OAuth-app
    /// tokens do not, but this works on them too): the API answers `401 Bad credentials`.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for grant in self.shared.lock().access_tokens.values_mut() {
            grant.expires = Some(now);
        }
    }

    /// Forgets every refresh token issued so far: redeeming them fails with `bad_refresh_token`.
    pub fn revoke_refresh_tokens(&self) {
        self.shared.lock().refresh_tokens.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// Server

fn json_reply(status: u16, v: &Value) -> FakeReply {
    fake_provider::json_reply(status, v, &[])
}

fn page(status: u16, title: &str, message: &str) -> FakeReply {
    typed_reply(
        status,
        "text/html; charset=utf-8",
        format!(
            "<!DOCTYPE html><html><head><title>{} · GitHub</title></head><body><h1>{}</h1>\
             <p>{}</p></body></html>",
            html_escape(title),
            html_escape(title),
            html_escape(message)
        )
        .into_bytes(),
    )
}

fn not_found_page() -> FakeReply {
    page(
        404,
        "Page not found",
        "This is not the web page you are looking for.",
    )
}

fn redirect(location: String) -> FakeReply {
    fake_provider::redirect_reply(
        location,
        &[
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-cache"),
        ],
    )
}

fn handle(shared: &Shared, request: &FakeRequest) -> FakeReply {
    let url = request.url.clone();
    let (path, _) = url.split_once('?').unwrap_or((url.as_str(), ""));
    match path {
        AUTHORIZE_PATH => return authorize(shared, request, Who::Browser),
        TOKEN_PATH => return token(shared, request),
        _ => {}
    }
    let prefix = shared.lock().cfg.api_prefix.clone();
    match path.strip_prefix(prefix.as_str()) {
        Some(api_path) if api_path.starts_with('/') => api(shared, request, api_path),
        _ => not_found_page(),
    }
}

/// `n` random characters from `[A-Za-z0-9]`, as in GitHub's tokens.
fn random_alnum(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes(n)
        .iter()
        .map(|b| A[usize::from(*b) % A.len()] as char)
        .collect()
}

fn random_hex(n_bytes: usize) -> String {
    random_bytes(n_bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// GitHub scopes are space-separated (commas tolerated); kept in order, without repeats.
fn split_scopes(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for scope in s.split([' ', ',']).map(str::trim).filter(|x| !x.is_empty()) {
        if !out.iter().any(|o| o == scope) {
            out.push(scope.to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// GET /login/oauth/authorize

fn authorize(shared: &Shared, request: &FakeRequest, who: Who) -> FakeReply {
    let query = request.url.split_once('?').map_or("", |(_, q)| q);
    let params: Params = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut st = shared.lock();
    st.authorize_requests.push(params.clone());
    if request.method != "GET" {
        return not_found_page();
    }
    let cfg = st.cfg.clone();
    let p = |k: &str| param(&params, k).map(str::to_string);
    // An unknown application: GitHub's 404 page, no redirect.
    if p("client_id").as_deref() != Some(cfg.client_id.as_str()) {
        return not_found_page();
    }
    let state = p("state");
    // Errors GitHub reports by redirecting to the registered callback URL.
    let fail = |target: &str, error: &str, description: &str, anchor: &str| {
        let uri = format!("{DOCS_AUTHORIZE_ERRORS}#{anchor}");
        let mut out = vec![
            ("error", error),
            ("error_description", description),
            ("error_uri", uri.as_str()),
        ];
        if let Some(s) = &state {
            out.push(("state", s.as_str()));
        }
        redirect(with_query(target, &out))
    };
    if cfg.suspended {
        return fail(
            &cfg.redirect_uri,
            "application_suspended",
            "Your application has been suspended. Contact support@github.com.",
            "application-suspended",
        );
    }
    let redirect_uri = p("redirect_uri").unwrap_or_else(|| cfg.redirect_uri.clone());
    if redirect_uri != cfg.redirect_uri {
        return fail(
            &cfg.redirect_uri,
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
            "redirect-uri-mismatch",
        );
    }
    if cfg.require_state && state.as_deref().unwrap_or("").is_empty() {
        return page(
            400,
            "Missing state",
            "fake GitHub: this fake requires a non-empty state parameter (GitHub recommends it).",
        );
    }
    let challenge = p("code_challenge");
    let method = p("code_challenge_method");
    match (&challenge, method.as_deref()) {
        (None, None) if cfg.require_pkce => {
            return page(
                400,
                "Missing code_challenge",
                "fake GitHub: this fake requires PKCE (code_challenge with \
                 code_challenge_method=S256).",
            )
        }
        (None, None) => {}
        (Some(c), Some("S256")) if c.len() == 43 && is_b64url(c) => {}
        (Some(_), Some("S256")) => {
            return page(
                400,
                "Invalid code_challenge",
                "The code_challenge must be 43 base64url characters (S256).",
            )
        }
        _ => {
            return page(
                400,
                "Invalid code_challenge_method",
                "Only the S256 code challenge method is accepted.",
            )
        }
    }
    let user = match who {
        Who::Decline => None,
        Who::Browser if cfg.cancel => None,
        Who::Browser => Some(cfg.user.clone()),
        Who::User(u) => Some(u.clone()),
    };
    let Some(user) = user else {
        return fail(
            &redirect_uri,
            "access_denied",
            "The user has denied your application access.",
            "access-denied",
        );
    };
    let code = random_hex(10);
    st.users.insert(user.id, user.clone());
    st.codes.insert(
        code.clone(),
        CodeGrant {
            client_id: cfg.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            code_challenge: challenge,
            scopes: split_scopes(&p("scope").unwrap_or_default()),
            user_id: user.id,
            issued: Instant::now(),
            redeemed: false,
        },
    );
    st.issued_codes += 1;
    let mut out = vec![("code", code.as_str())];
    if let Some(s) = &state {
        out.push(("state", s.as_str()));
    }
    redirect(with_query(&redirect_uri, &out))
}

// ---------------------------------------------------------------------------------------------
// POST /login/oauth/access_token

/// The token endpoint's answer: form-encoded, or JSON when the request accepts JSON. GitHub
/// answers errors with HTTP 200 too.
fn token_answer(json_wanted: bool, fields: &[(&str, Value)]) -> FakeReply {
    if json_wanted {
        let mut map = serde_json::Map::new();
        for (k, v) in fields {
            map.insert(k.to_string(), v.clone());
        }
        return json_reply(200, &Value::Object(map));
    }
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        ser.append_pair(k, &text);
    }
    typed_reply(
        200,
        "application/x-www-form-urlencoded; charset=utf-8",
        ser.finish().into_bytes(),
    )
}

fn token_error(json_wanted: bool, error: &str, description: &str, uri: &str) -> FakeReply {
    token_answer(
        json_wanted,
        &[
            ("error", json!(error)),
            ("error_description", json!(description)),
            ("error_uri", json!(uri)),
        ],
    )
}

fn token(shared: &Shared, request: &FakeRequest) -> FakeReply {
    if request.method != "POST" {
        return not_found_page();
    }
    let json_wanted = request
        .header("accept")
        .is_some_and(|a| a.to_ascii_lowercase().contains("application/json"));
    // Parameters: the query string, then a form or JSON body.
    let params = request_params(request);
    let delay = {
        let mut st = shared.lock();
        st.token_requests.push(params.clone());
        st.token_calls += 1;
        st.cfg.token_delay
    };
    shared.nap(delay);

    let mut st = shared.lock();
    let cfg = st.cfg.clone();
    if let Some((error, description)) = &cfg.token_error {
        return token_error(json_wanted, error, description, DOCS_TOKEN_ERRORS);
    }
    let f = |k: &str| param(&params, k).map(str::to_string);
    let basic = request.header("authorization").and_then(parse_basic);
    let client_id = f("client_id").or_else(|| basic.as_ref().map(|(id, _)| id.clone()));
    let secret = f("client_secret").or_else(|| basic.as_ref().map(|(_, s)| s.clone()));
    let bad_client = || {
        token_error(
            json_wanted,
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
            &format!("{DOCS_TOKEN_ERRORS}#incorrect-client-credentials"),
        )
    };
    if client_id.as_deref() != Some(cfg.client_id.as_str())
        || secret.as_deref() != Some(cfg.client_secret.as_str())
    {
        return bad_client();
    }
    let bad_code = || {
        token_error(
            json_wanted,
            "bad_verification_code",
            "The code passed is incorrect or expired.",
            &format!("{DOCS_TOKEN_ERRORS}#bad-verification-code"),
        )
    };

    let (user_id, scopes) = match f("grant_type").as_deref() {
        None | Some("authorization_code") => {
            let Some(code) = f("code") else {
                return bad_code();
            };
            let Some(grant) = st.codes.get_mut(&code) else {
                return bad_code();
            };
            if grant.redeemed
                || grant.issued.elapsed() > cfg.code_lifetime
                || grant.client_id != cfg.client_id
            {
                return bad_code();
            }
            if let Some(uri) = f("redirect_uri") {
                if uri != grant.redirect_uri {
                    return token_error(
                        json_wanted,
                        "redirect_uri_mismatch",
                        "The redirect_uri MUST match the registered callback URL for this \
                         application.",
                        &format!("{DOCS_AUTHORIZE_ERRORS}#redirect-uri-mismatch2"),
                    );
                }
            }
            if let Some(challenge) = &grant.code_challenge {
                let ok = f("code_verifier")
                    .is_some_and(|v| is_pkce_verifier(&v) && pkce_challenge(&v) == *challenge);
                if !ok {
                    return token_error(
                        json_wanted,
                        "bad_code_verifier",
                        "The code_verifier does not match the code_challenge supplied in the \
                         authorization request.",
                        DOCS_TOKEN_ERRORS,
                    );
                }
            }
            grant.redeemed = true;
            let out = (grant.user_id, grant.scopes.clone());
            st.redeemed_codes += 1;
            out
        }
        Some("refresh_token") => {
            let bad_refresh = || {
                token_error(
                    json_wanted,
                    "bad_refresh_token",
                    "The refresh token passed is incorrect or expired.",
                    DOCS_REFRESH,
                )
            };
            let Some(refresh) = f("refresh_token") else {
                return bad_refresh();
            };
            let valid = st.refresh_tokens.get(&refresh).is_some_and(|g| {
                cfg.github_app && g.client_id == cfg.client_id && Instant::now() < g.expires
            });
            if !valid {
                return bad_refresh();
            }
            // GitHub rotates refresh tokens: the one just used is spent.
            let grant = st.refresh_tokens.remove(&refresh).unwrap();
            st.refreshes += 1;
            (grant.user_id, grant.scopes)
        }
        Some(_) => {
            return token_error(
                json_wanted,
                "unsupported_grant_type",
                "The grant type is not supported.",
                DOCS_TOKEN_ERRORS,
            )
        }
    };

    if !cfg.github_app {
        let access_token = format!("gho_{}", random_alnum(36));
        st.access_tokens.insert(
            access_token.clone(),
            AccessGrant {
                user_id,
                scopes: scopes.clone(),
                expires: None,
            },
        );
        return token_answer(
            json_wanted,
            &[
                ("access_token", json!(access_token)),
                ("scope", json!(scopes.join(","))),
                ("token_type", json!("bearer")),
            ],
        );
    }
    let access_token = format!("ghu_{}", random_alnum(36));
    let refresh_token = format!("ghr_{}", random_alnum(76));
    let now = Instant::now();
    st.access_tokens.insert(
        access_token.clone(),
        AccessGrant {
            user_id,
            scopes: Vec::new(),
            expires: Some(now + Duration::from_secs(cfg.access_token_lifetime_secs)),
        },
    );
    st.refresh_tokens.insert(
        refresh_token.clone(),
        RefreshGrant {
            client_id: cfg.client_id.clone(),
            user_id,
            scopes,
            expires: now + Duration::from_secs(cfg.refresh_token_lifetime_secs),
        },
    );
    token_answer(
        json_wanted,
        &[
            ("access_token", json!(access_token)),
            ("expires_in", json!(cfg.access_token_lifetime_secs)),
            ("refresh_token", json!(refresh_token)),
            (
                "refresh_token_expires_in",
                json!(cfg.refresh_token_lifetime_secs),
            ),
            ("scope", json!("")),
            ("token_type", json!("bearer")),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// REST API

fn api_error(status: u16, message: &str, documentation_url: &str) -> FakeReply {
    let mut r = json_reply(
        status,
        &json!({
            "message": message,
            "documentation_url": documentation_url,
            "status": status.to_string(),
        }),
    );
    r.headers
        .push(("X-GitHub-Media-Type", "github.v3; format=json".into()));
    r
}

const DOCS_USER: &str = "https://docs.github.com/rest/users/users#get-the-authenticated-user";
const DOCS_EMAILS: &str =
    "https://docs.github.com/rest/users/emails#list-email-addresses-for-the-authenticated-user";

fn api(shared: &Shared, request: &FakeRequest, path: &str) -> FakeReply {
    let delay = {
        let mut st = shared.lock();
        st.api_requests.push(ApiRequest {
            method: request.method.clone(),
            url: request.url.clone(),
            headers: request.headers.clone(),
        });
        match path {
            "/user" => st.user_calls += 1,
            "/user/emails" => st.emails_calls += 1,
            _ => {}
        }
        st.cfg.api_delay
    };
    shared.nap(delay);
    // api.github.com refuses requests without a User-Agent before anything else.
    if request
        .header("user-agent")
        .is_none_or(|ua| ua.trim().is_empty())
    {
        return typed_reply(
            403,
            "text/plain; charset=utf-8",
            b"Request forbidden by administrative rules. Please make sure your request has a \
              User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). \
              Check https://developer.github.com for other possible causes.\n"
                .to_vec(),
        );
    }
    if request.method != "GET" || !matches!(path, "/user" | "/user/emails") {
        return api_error(404, "Not Found", "https://docs.github.com/rest");
    }
    let st = shared.lock();
    let injected = if path == "/user" {
        &st.cfg.user_error
    } else {
        &st.cfg.emails_error
    };
    if let Some((status, message)) = injected {
        return api_error(*status, message, "https://docs.github.com/rest");
    }
    let token = request.header("authorization").and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
            .then(|| token.trim().to_string())
    });
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        let docs = if path == "/user" {
            DOCS_USER
        } else {
            DOCS_EMAILS
        };
        return api_error(401, "Requires authentication", docs);
    };
    let Some(grant) = st
        .access_tokens
        .get(&token)
        .filter(|g| g.expires.is_none_or(|e| Instant::now() < e))
    else {
        return api_error(401, "Bad credentials", "https://docs.github.com/rest");
    };
    let Some(user) = st.users.get(&grant.user_id).cloned() else {
        return api_error(401, "Bad credentials", "https://docs.github.com/rest");
    };
    let github_app = st.cfg.github_app;
    let app_email_permission = st.cfg.app_email_permission;
    let scopes = grant.scopes.clone();
    let api_base = format!("{}{}", shared.base, st.cfg.api_prefix);
    drop(st);

    let mut r = if path == "/user" {
        json_reply(
            200,
            &json!({
                "login": user.login,
                "id": user.id,
                "node_id": format!("U_kgDO{}", b64url_encode(&user.id.to_be_bytes()[2..])),
                "avatar_url": format!("https://avatars.githubusercontent.com/u/{}?v=4", user.id),
                "gravatar_id": "",
                "url": format!("{api_base}/users/{}", user.login),
                "html_url": format!("{}/{}", shared.base, user.login),
                "type": "User",
                "site_admin": false,
                "name": user.name,
                "company": null,
                "blog": "",
                "location": null,
                "email": user.public_email,
                "hireable": null,
                "bio": null,
                "twitter_username": null,
                "public_repos": 3,
                "public_gists": 0,
                "followers": 1,
                "following": 0,
                "created_at": "2016-03-01T09:12:44Z",
                "updated_at": "2025-01-15T17:30:02Z",
            }),
        )
    } else {
        if github_app && !app_email_permission {
            return api_error(403, "Resource not accessible by integration", DOCS_EMAILS);
        }
        if !github_app && !scopes.iter().any(|s| s == "user" || s == "user:email") {
            // What GitHub answers when the token lacks the scope: 404, not 403.
            let mut r = api_error(404, "Not Found", DOCS_EMAILS);
            r.headers.push(("X-OAuth-Scopes", scopes.join(", ")));
            r.headers
                .push(("X-Accepted-OAuth-Scopes", "user, user:email".into()));
            return r;
        }
        let list: Vec<Value> = user
            .emails
            .iter()
            .map(|e| {
                json!({
                    "email": e.email,
                    "primary": e.primary,
                    "verified": e.verified,
                    "visibility": e.visibility,
                })
            })
            .collect();
        json_reply(200, &Value::Array(list))
    };
    r.headers
        .push(("X-GitHub-Media-Type", "github.v3; format=json".into()));
    if !github_app {
        r.headers.push(("X-OAuth-Scopes", scopes.join(", ")));
        let accepted = if path == "/user" {
            ""
        } else {
            "user, user:email"
        };
        r.headers.push(("X-Accepted-OAuth-Scopes", accepted.into()));
    }
    r
}
