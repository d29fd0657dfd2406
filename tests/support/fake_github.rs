//! A fake GitHub (OAuth 2.0, not OpenID Connect) on one plain-HTTP port, on the
//! authorization-server core of fake_as.rs: the web flow (`GET /login/oauth/authorize`,
//! `POST /login/oauth/access_token`) and the REST API (`GET /user`, `GET /user/emails`,
//! `DELETE /applications/{client_id}/grant`, under a configurable prefix such as GitHub
//! Enterprise's `/api/v3`). What is GitHub's own, and kept here:
//!
//! - authorize: an unknown `client_id` gets a 404 page; a `redirect_uri` other than the
//!   registered callback URL is sent back to the *registered* callback with
//!   `error=redirect_uri_mismatch` (GitHub's documented behaviour), and leaving it out means the
//!   registered one; a refusal comes back as `error=access_denied`; PKCE is S256 only; no
//!   `response_type`. Stricter than GitHub, on purpose and switchable: the redirect URI must
//!   match byte for byte (GitHub accepts sub-paths of the callback URL), and `state` and PKCE
//!   are required by default (GitHub recommends both, requires neither).
//! - token: every app has a secret (form or HTTP Basic); `redirect_uri` is optional. The
//!   answer is form-encoded unless `Accept: application/json` asks for JSON, and every error is
//!   HTTP 200 with `error`, `error_description`, `error_uri` (`bad_verification_code`,
//!   `bad_refresh_token`, ...). OAuth-app `gho_` tokens never expire and come without a refresh
//!   token; `github_app` emulates a GitHub App with expiring user tokens (`ghu_` with
//!   `expires_in`, `ghr_` refresh tokens with `refresh_token_expires_in`), rotated by
//!   `RefreshPolicy::github_app()`.
//! - API: a `User-Agent` header is required (403 otherwise); `Authorization: Bearer` or
//!   `token`; `401 Bad credentials` for an unknown token; `/user`'s `email` is the *public*
//!   address (often `null`); `/user/emails` needs the `user:email` (or `user`) scope and
//!   answers 404 without it, as GitHub does. Revocation is grant deletion, with the app's
//!   credentials as HTTP Basic and the token in a JSON body: every token of that user and app
//!   ends (GitHub has no RFC 7009 endpoint).
//!
//! The person signing in: fetching the authorize URL over HTTP signs in `FakeGitHubConfig::user`
//! at once (no form), and a test picks anyone with `FakeGitHub::sign_in(url, &user)` or refuses
//! with `FakeGitHub::decline(url)`. API answers read the user's *current* data
//! (`FakeGitHub::update_user`), as GitHub's API does.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::fake_as::{
    check_authorize, AsState, AuthorizeError, AuthorizeRules, ClientRule, CodeError, Grant, Params,
    PkceRules, RefreshPolicy, Refusal, TokenError, TokenQuirks, TokenRules, Who,
};
use super::fake_http::{FakeReply, FakeRequest};
// The helpers tests use, under this fake's name (not every test crate uses them all).
#[allow(unused_imports)]
pub use super::fake_provider::{
    b64url_encode, param, pkce_challenge, pkce_verifier, query_params, SignInError,
};
use super::fake_provider::{
    html_escape, parse_basic, random_bytes, request_params, typed_reply, with_query, Core, Running,
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
const DOCS_GRANT: &str =
    "https://docs.github.com/rest/apps/oauth-applications#delete-an-app-authorization";

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
    /// What a used refresh token becomes (GitHub App mode): `RefreshPolicy::github_app()`.
    pub refresh_policy: RefreshPolicy,
    /// How long a code can be redeemed (GitHub: 10 minutes).
    pub code_lifetime: Duration,
    /// Where the REST API lives under the base URL: `""` as on api.github.com, `"/api/v3"` as on
    /// GitHub Enterprise Server.
    pub api_prefix: String,
    /// Sleep this long before answering the token endpoint (one-shot faults:
    /// `inject_token_fault`).
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
            refresh_policy: RefreshPolicy::github_app(),
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

/// What is GitHub's own: everyone who signed in (the API reads their current data here) and
/// the API's records.
#[derive(Default)]
pub struct GitHubOwn {
    users: HashMap<u64, GitHubUser>,
    api_requests: Vec<ApiRequest>,
    user_calls: usize,
    emails_calls: usize,
}

/// Grants remember the user's id.
type State = AsState<FakeGitHubConfig, u64, GitHubOwn>;
type Shared = Core<State>;

/// A running fake GitHub on `127.0.0.1:<free port>`; stopped (threads joined) on drop. The
/// core's methods (`config`, `set`, `counters`, `inject_token_fault`, ...) come with it.
pub type FakeGitHub = Running<State>;

const AUTHORIZE_PATH: &str = "/login/oauth/authorize";
const TOKEN_PATH: &str = "/login/oauth/access_token";

impl FakeGitHub {
    /// Starts with `FakeGitHubConfig::default()`.
    pub fn start() -> FakeGitHub {
        FakeGitHub::start_with(FakeGitHubConfig::default())
    }

    /// Starts with `cfg`.
    pub fn start_with(cfg: FakeGitHubConfig) -> FakeGitHub {
        let state = AsState::new(cfg, GitHubOwn::default());
        Running::serve("fake-github", state, (), handle)
    }

    /// `{base}/login/oauth/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.base)
    }

    /// `{base}/login/oauth/access_token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base)
    }

    /// The REST API root (api.github.com): `{base}{api_prefix}`, no trailing slash.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.base, self.lock().cfg.api_prefix)
    }

    /// The relay's provider settings (`OAUTH_RELAY_PROVIDER_<NAME>_*`) for a GitHub provider on
    /// this fake.
    pub fn provider_settings(&self) -> Vec<(&'static str, String)> {
        let cfg = self.config();
        vec![
            ("KIND", "github".into()),
            ("CLIENT_ID", cfg.client_id),
            ("CLIENT_SECRET", cfg.client_secret),
            ("AUTHORIZE_URL", self.authorize_url()),
            ("TOKEN_URL", self.token_url()),
            ("API_URL", self.api_url()),
        ]
    }

    /// `{api}/user`.
    pub fn user_url(&self) -> String {
        format!("{}/user", self.api_url())
    }

    /// `{api}/user/emails`.
    pub fn emails_url(&self) -> String {
        format!("{}/user/emails", self.api_url())
    }

    /// `{api}/applications/{client_id}/grant`: `DELETE` with the app's credentials as HTTP
    /// Basic and `{"access_token": ...}` ends the user's grant.
    pub fn grant_url(&self) -> String {
        let client_id = self.lock().cfg.client_id.clone();
        format!("{}/applications/{client_id}/grant", self.api_url())
    }

    /// The person at `url` (an authorize URL, as the broker built it) signs in as `user`:
    /// returns the redirect the browser would follow (`redirect_uri?code=...&state=...`, or an
    /// error redirect such as `redirect_uri_mismatch`), or the page GitHub shows instead.
    pub fn sign_in(&self, url: &str, user: &GitHubUser) -> Result<String, SignInError> {
        self.at_keyboard(url, Who::User(user))
    }

    /// The person at `url` clicks "Cancel": `redirect_uri?error=access_denied&...&state=...`
    /// (or the page GitHub shows when the request itself is wrong).
    pub fn decline(&self, url: &str) -> Result<String, SignInError> {
        self.at_keyboard(url, Who::Decline)
    }

    fn at_keyboard(&self, url: &str, who: Who<GitHubUser>) -> Result<String, SignInError> {
        self.visit(url, "GitHub", |path, request| {
            if path == AUTHORIZE_PATH {
                authorize(self, request, who)
            } else {
                handle(self, request)
            }
        })
    }

    /// Adds or replaces a user (by id); the API answers with their current data.
    pub fn add_user(&self, user: GitHubUser) {
        self.lock().own.users.insert(user.id, user);
    }

    /// Changes a user's data (e.g. an address gets verified) for the API's next answers and,
    /// when it is `config().user`, for later sign-ins too; `false` if the id is unknown.
    pub fn update_user(&self, id: u64, f: impl FnOnce(&mut GitHubUser)) -> bool {
        let mut st = self.lock();
        let mut updated = match st.own.users.get(&id) {
            Some(u) => u.clone(),
            None if st.cfg.user.id == id => st.cfg.user.clone(),
            None => return false,
        };
        f(&mut updated);
        if st.cfg.user.id == id {
            st.cfg.user = updated.clone();
        }
        st.own.users.insert(id, updated);
        true
    }

    /// Every API request (any path), in order.
    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.lock().own.api_requests.clone()
    }

    /// Requests to `/user` (any outcome).
    pub fn user_calls(&self) -> usize {
        self.lock().own.user_calls
    }

    /// Requests to `/user/emails` (any outcome).
    pub fn emails_calls(&self) -> usize {
        self.lock().own.emails_calls
    }
}

// ---------------------------------------------------------------------------------------------
// Server

fn json_reply(status: u16, v: &Value) -> FakeReply {
    super::fake_provider::json_reply(status, v, &[])
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
    super::fake_provider::redirect_reply(
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

fn authorize(shared: &Shared, request: &FakeRequest, who: Who<GitHubUser>) -> FakeReply {
    let query = request.url.split_once('?').map_or("", |(_, q)| q);
    let params: Params = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut st = shared.lock();
    st.auth.authorize_requests.push(params.clone());
    if request.method != "GET" {
        return not_found_page();
    }
    let cfg = st.cfg.clone();
    let registered = vec![cfg.redirect_uri.clone()];
    // Errors GitHub reports by redirecting to the registered callback URL.
    let fail = |error: &str, description: &str, anchor: &str| {
        let uri = format!("{DOCS_AUTHORIZE_ERRORS}#{anchor}");
        let mut out = vec![
            ("error", error),
            ("error_description", description),
            ("error_uri", uri.as_str()),
        ];
        if let Some(s) = param(&params, "state") {
            out.push(("state", s));
        }
        redirect(with_query(&cfg.redirect_uri, &out))
    };
    if cfg.suspended && param(&params, "client_id") == Some(cfg.client_id.as_str()) {
        return fail(
            "application_suspended",
            "Your application has been suspended. Contact support@github.com.",
            "application-suspended",
        );
    }
    let rules = AuthorizeRules {
        client_id: &cfg.client_id,
        redirect_uris: &registered,
        default_redirect_uri: true,
        response_type: false,
        require_scope: false,
        require_state: cfg.require_state,
        pkce: PkceRules {
            required: cfg.require_pkce,
            methods: &["S256"],
            default_method: None,
        },
    };
    let request = match check_authorize(&params, &rules) {
        Ok(request) => request,
        Err(Refusal { error, .. }) => {
            return match error {
                AuthorizeError::MissingClientId | AuthorizeError::UnknownClient(_) => {
                    not_found_page()
                }
                AuthorizeError::UnregisteredRedirectUri(_) => fail(
                    "redirect_uri_mismatch",
                    "The redirect_uri MUST match the registered callback URL for this \
                     application.",
                    "redirect-uri-mismatch",
                ),
                AuthorizeError::MissingState => page(
                    400,
                    "Missing state",
                    "fake GitHub: this fake requires a non-empty state parameter (GitHub \
                     recommends it).",
                ),
                AuthorizeError::MissingChallenge => page(
                    400,
                    "Missing code_challenge",
                    "fake GitHub: this fake requires PKCE (code_challenge with \
                     code_challenge_method=S256).",
                ),
                AuthorizeError::InvalidChallenge => page(
                    400,
                    "Invalid code_challenge",
                    "The code_challenge must be 43 base64url characters (S256).",
                ),
                _ => page(
                    400,
                    "Invalid code_challenge_method",
                    "Only the S256 code challenge method is accepted.",
                ),
            }
        }
    };
    let Some(user) = who.consents(cfg.cancel, &cfg.user) else {
        return fail(
            "access_denied",
            "The user has denied your application access.",
            "access-denied",
        );
    };
    st.own.users.insert(user.id, user.clone());
    let scopes = split_scopes(&request.scope);
    let code = st
        .auth
        .issue_code(random_hex(10), &request, scopes, user.id);
    let mut out = vec![("code", code.as_str())];
    if let Some(s) = &request.state {
        out.push(("state", s.as_str()));
    }
    redirect(with_query(&request.redirect_uri, &out))
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
    let basic = request.header("authorization").and_then(parse_basic);
    // Parameters: the query string, then a form or JSON body.
    shared.serve_token(
        request_params(request),
        |c| c.token_delay,
        |st, params| token_grant(st, params, basic.as_ref(), json_wanted),
    )
}

/// GitHub's side of a token request: its words (HTTP 200 errors), its token formats.
struct GitHubTokens<'a> {
    cfg: &'a FakeGitHubConfig,
    json_wanted: bool,
}

impl TokenQuirks<u64> for GitHubTokens<'_> {
    fn refuse(&self, e: TokenError) -> FakeReply {
        let (error, description, uri) = match e {
            TokenError::Client(_) => (
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
                format!("{DOCS_TOKEN_ERRORS}#incorrect-client-credentials"),
            ),
            TokenError::Code(CodeError::RedirectMismatch { .. }) => (
                "redirect_uri_mismatch",
                "The redirect_uri MUST match the registered callback URL for this application.",
                format!("{DOCS_AUTHORIZE_ERRORS}#redirect-uri-mismatch2"),
            ),
            TokenError::Code(CodeError::MissingVerifier | CodeError::WrongVerifier) => (
                "bad_code_verifier",
                "The code_verifier does not match the code_challenge supplied in the \
                 authorization request.",
                DOCS_TOKEN_ERRORS.to_string(),
            ),
            TokenError::Code(_) | TokenError::Missing("code") => (
                "bad_verification_code",
                "The code passed is incorrect or expired.",
                format!("{DOCS_TOKEN_ERRORS}#bad-verification-code"),
            ),
            TokenError::Refresh(_) | TokenError::Missing(_) => (
                "bad_refresh_token",
                "The refresh token passed is incorrect or expired.",
                DOCS_REFRESH.to_string(),
            ),
            TokenError::UnsupportedGrantType(_) => (
                "unsupported_grant_type",
                "The grant type is not supported.",
                DOCS_TOKEN_ERRORS.to_string(),
            ),
        };
        token_error(self.json_wanted, error, description, &uri)
    }

    fn new_refresh_token(&self) -> String {
        format!("ghr_{}", random_alnum(76))
    }

    /// Only GitHub Apps with expiring user tokens have refresh tokens.
    fn refresh_on_code(&self, _: &Grant<u64>) -> bool {
        self.cfg.github_app
    }

    fn refreshable(&self) -> bool {
        self.cfg.github_app
    }
}

fn token_grant(
    st: &mut State,
    params: &Params,
    basic: Option<&(String, String)>,
    json_wanted: bool,
) -> FakeReply {
    let cfg = st.cfg.clone();
    if let Some((error, description)) = &cfg.token_error {
        return token_error(json_wanted, error, description, DOCS_TOKEN_ERRORS);
    }
    let rules = TokenRules {
        client: ClientRule {
            client_id: &cfg.client_id,
            secret: Some(&cfg.client_secret),
        },
        default_grant_type: Some("authorization_code"),
        client_first: true,
        redirect_uri_required: false,
        code_lifetime: cfg.code_lifetime,
        refresh_policy: cfg.refresh_policy,
        refresh_lifetime: Some(Duration::from_secs(cfg.refresh_token_lifetime_secs)),
    };
    let quirks = GitHubTokens {
        cfg: &cfg,
        json_wanted,
    };
    let granted = match st.auth.token(params, basic, &rules, &quirks) {
        Ok(granted) => granted,
        Err(reply) => return reply,
    };
    let grant = granted.grant;
    let scopes = st.auth.grant(grant).scopes.clone();
    if !cfg.github_app {
        let access_token = format!("gho_{}", random_alnum(36));
        st.auth
            .issue_access(access_token.clone(), grant, scopes.clone(), None);
        return token_answer(
            json_wanted,
            &[
                ("access_token", json!(access_token)),
                ("scope", json!(scopes.join(","))),
                ("token_type", json!("bearer")),
            ],
        );
    }
    // GitHub Apps have permissions, not scopes.
    let access_token = format!("ghu_{}", random_alnum(36));
    let lifetime = Duration::from_secs(cfg.access_token_lifetime_secs);
    st.auth
        .issue_access(access_token.clone(), grant, Vec::new(), Some(lifetime));
    let mut fields = vec![
        ("access_token", json!(access_token)),
        ("expires_in", json!(cfg.access_token_lifetime_secs)),
    ];
    if let Some(refresh) = granted.refresh_token {
        fields.push(("refresh_token", json!(refresh)));
        fields.push((
            "refresh_token_expires_in",
            json!(cfg.refresh_token_lifetime_secs),
        ));
    }
    fields.push(("scope", json!("")));
    fields.push(("token_type", json!("bearer")));
    token_answer(json_wanted, &fields)
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
        st.own.api_requests.push(ApiRequest {
            method: request.method.clone(),
            url: request.url.clone(),
            headers: request.headers.clone(),
        });
        match path {
            "/user" => st.own.user_calls += 1,
            "/user/emails" => st.own.emails_calls += 1,
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
    let grant_path = format!("/applications/{}/grant", shared.lock().cfg.client_id);
    if request.method == "DELETE" && path == grant_path {
        return delete_grant(shared, request);
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
    let Some((access, grant)) = st.auth.live_access(&token) else {
        return api_error(401, "Bad credentials", "https://docs.github.com/rest");
    };
    let Some(user) = st.own.users.get(&grant.user).cloned() else {
        return api_error(401, "Bad credentials", "https://docs.github.com/rest");
    };
    let github_app = st.cfg.github_app;
    let app_email_permission = st.cfg.app_email_permission;
    let scopes = access.scopes.clone();
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

/// `DELETE /applications/{client_id}/grant`: the app's `client_id` and `client_secret` as HTTP
/// Basic, `{"access_token": ...}` as the body; every token of that user for the app ends
/// ("Deleting an OAuth application's grant will also delete all OAuth tokens associated with
/// the application for the user"). 204 when done; 422 without an `access_token`. Wrong
/// credentials and unknown tokens get 404, as GitHub hides what a caller may not see.
fn delete_grant(shared: &Shared, request: &FakeRequest) -> FakeReply {
    let st = &mut *shared.lock();
    let basic = request.header("authorization").and_then(parse_basic);
    if basic != Some((st.cfg.client_id.clone(), st.cfg.client_secret.clone())) {
        return api_error(404, "Not Found", DOCS_GRANT);
    }
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let Some(token) = body["access_token"].as_str() else {
        let message = "Invalid request.\n\n\"access_token\" wasn't supplied.";
        return api_error(422, message, DOCS_GRANT);
    };
    let Some((_, grant)) = st.auth.live_access(token) else {
        return api_error(404, "Not Found", DOCS_GRANT);
    };
    // One authorization per user and app: all of that user's grants end.
    let user = grant.user;
    st.auth.revoke_grants_where(|g| g.user == user);
    st.auth.counters.revocations += 1;
    typed_reply(204, "text/plain", Vec::new())
}
