//! A fake Microsoft identity platform (v2.0 authorize/token endpoints) and Microsoft Graph
//! (`GET /v1.0/me`) on one plain-HTTP port, enforcing what Microsoft enforces for the
//! authorization-code flow with PKCE: registered redirect URIs (exact match, error page and no
//! redirect when they differ), one-time codes that expire after 10 minutes, the same
//! `redirect_uri` at redemption, S256 PKCE, client authentication for confidential clients (and
//! none for public ones), `refresh_token` only with `offline_access`, `id_token` only with
//! `openid`, and its claims by scope (`oid`, `name`, `preferred_username` need `profile`;
//! `email` needs `email`). Errors have Microsoft's shape and AADSTS codes.
//!
//! The user "signs in" without a form: `/authorize` answers at once with the redirect. Who signed
//! in is fixed when the code is issued (a later `set` changes later sign-ins only); behaviours
//! (`cancel`, delays, injected errors, ...) are read when each request arrives.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

#[path = "fake_http.rs"]
mod fake_http;
use fake_http::{FakeReply, FakeRequest};
// The fake-provider core, included the same way (see fake_github.rs).
#[allow(clippy::duplicate_mod)]
#[path = "fake_provider.rs"]
mod fake_provider;
// The helpers tests use, under this fake's name (not every test crate uses them all).
#[allow(unused_imports)]
pub use fake_provider::{b64url_encode, param, pkce_challenge, pkce_verifier, query_params};
use fake_provider::{
    html_escape, html_reply, is_b64url, is_pkce_verifier, random_b64, random_bytes, unix_now,
    Running,
};

/// The fake's settings. Set at start (`FakeMicrosoft::start_with`) or later (`FakeMicrosoft::set`).
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// The app registration's application (client) id.
    pub client_id: String,
    /// The directory the app is registered in; `/{tenant}/...` accepts it, `organizations`, `common`.
    pub tenant_id: String,
    /// Registered redirect URIs; `/authorize` and `/token` need an exact (byte-for-byte) match.
    pub redirect_uris: Vec<String>,
    /// `Some`: a confidential ("Web") client that must authenticate at `/token` (form
    /// `client_secret` or HTTP Basic). `None`: a public client, which must NOT send a secret.
    pub client_secret: Option<String>,
    /// Graph `mail` of the user who signs in (`None`: `null`, as for accounts without a mailbox).
    pub user_mail: Option<String>,
    /// The id_token's `email` claim (given the `email` scope) when it is not `user_mail`: the
    /// address `xms_edov` speaks of. `None`: `user_mail`, as for most accounts.
    pub user_email_claim: Option<String>,
    /// `userPrincipalName` / `preferred_username`.
    pub user_upn: String,
    /// The user's tenant (`tid`); `None`: the same as `tenant_id`.
    pub user_tid: Option<String>,
    /// The user's object id (`oid` claim, Graph `id`).
    pub user_oid: String,
    /// Display name (`name` claim, Graph `displayName`).
    pub user_name: String,
    /// The user declines: `/authorize` redirects back with `error=access_denied` (AADSTS65004).
    pub cancel: bool,
    /// Never return a `refresh_token`, even with `offline_access`.
    pub omit_refresh_token: bool,
    /// Sleep this long before answering `/token` (a slow identity provider).
    pub token_delay: Duration,
    /// Answer every `/token` request with this `(status, error, error_description)` (after the
    /// delay and before any validation; the code stays unredeemed).
    pub token_error: Option<(u16, String, String)>,
    /// `/v1.0/me` answers 500.
    pub graph_fail: bool,
    /// Sleep this long before answering `/v1.0/me`.
    pub graph_delay: Duration,
    /// How long an authorization code can be redeemed (Microsoft: about 10 minutes).
    pub code_lifetime: Duration,
    /// Domain names of the directory (`contoso.onmicrosoft.com`, verified custom domains):
    /// `/{domain}/...` works like `/{tenant_id}/...`, and discovery under a domain names the
    /// directory's GUID in its `issuer`, as Microsoft's does.
    pub tenant_domains: Vec<String>,
    /// The `xms_edov` optional claim in id_tokens ("the e-mail's domain owner is verified"):
    /// `None` leaves it out (an app that has not configured it).
    pub xms_edov: Option<bool>,
    /// `expires_in` of access tokens, in seconds (Graph rejects them afterwards).
    pub access_token_lifetime_secs: u64,
}

pub const DEFAULT_TENANT_ID: &str = "11111111-2222-3333-4444-555555555555";

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            client_id: "test-client-id".into(),
            tenant_id: DEFAULT_TENANT_ID.into(),
            redirect_uris: vec!["http://localhost/callback".into()],
            client_secret: None,
            user_mail: Some("ana.silva@contoso.example".into()),
            user_email_claim: None,
            user_upn: "ana.silva@contoso.example".into(),
            user_tid: None,
            user_oid: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            user_name: "Ana Silva".into(),
            cancel: false,
            omit_refresh_token: false,
            token_delay: Duration::ZERO,
            token_error: None,
            graph_fail: false,
            graph_delay: Duration::ZERO,
            code_lifetime: Duration::from_secs(600),
            access_token_lifetime_secs: 3600,
            tenant_domains: Vec::new(),
            xms_edov: None,
        }
    }
}

impl FakeConfig {
    /// The `tid` of the user who signs in.
    pub fn effective_user_tid(&self) -> String {
        self.user_tid
            .clone()
            .unwrap_or_else(|| self.tenant_id.clone())
    }
}

type Params = Vec<(String, String)>;

/// Who signed in, fixed when the code was issued.
#[derive(Clone, Debug)]
struct User {
    tid: String,
    oid: String,
    upn: String,
    mail: Option<String>,
    email_claim: Option<String>,
    name: String,
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    scopes: Vec<String>,
    nonce: Option<String>,
    user: User,
    issued: Instant,
    redeemed: bool,
}

struct RefreshGrant {
    client_id: String,
    scopes: Vec<String>,
    user: User,
}

struct AccessGrant {
    scopes: Vec<String>,
    user: User,
    expires: Instant,
}

struct State {
    cfg: FakeConfig,
    codes: HashMap<String, CodeGrant>,
    refresh_tokens: HashMap<String, RefreshGrant>,
    access_tokens: HashMap<String, AccessGrant>,
    authorize_requests: Vec<Params>,
    token_requests: Vec<Params>,
    issued_codes: usize,
    redeemed_codes: usize,
    refreshes: usize,
    graph_calls: usize,
    discovery_fetches: usize,
}

type Shared = fake_provider::Core<State>;

/// A running fake on `127.0.0.1:<free port>`; stopped (threads joined) on drop.
pub struct FakeMicrosoft {
    shared: Running<State>,
}

const MAX_BODY: usize = 64 * 1024;
const GRAPH_ID: &str = "00000003-0000-0000-c000-000000000000";

impl FakeMicrosoft {
    /// Starts with `FakeConfig::default()`.
    pub fn start() -> FakeMicrosoft {
        FakeMicrosoft::start_with(FakeConfig::default())
    }

    /// Starts with `cfg`.
    pub fn start_with(cfg: FakeConfig) -> FakeMicrosoft {
        let state = State {
            cfg,
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            authorize_requests: Vec::new(),
            token_requests: Vec::new(),
            issued_codes: 0,
            redeemed_codes: 0,
            refreshes: 0,
            graph_calls: 0,
            discovery_fetches: 0,
        };
        FakeMicrosoft {
            shared: Running::start("fake-microsoft", state, (), handle),
        }
    }

    /// `http://127.0.0.1:PORT`: both the login base URL and the Graph base URL.
    pub fn base_url(&self) -> String {
        self.shared.base_url()
    }

    /// `{base}/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.shared.base)
    }

    /// `{base}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.shared.base)
    }

    /// `{base}/v1.0/me`.
    pub fn graph_me_url(&self) -> String {
        format!("{}/v1.0/me", self.shared.base)
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> FakeConfig {
        self.shared.lock().cfg.clone()
    }

    /// Changes the configuration at runtime: `fake.set(|c| c.cancel = true)`.
    pub fn set(&self, f: impl FnOnce(&mut FakeConfig)) {
        f(&mut self.shared.lock().cfg)
    }

    /// Every `/authorize` request's query parameters, in order of arrival.
    pub fn authorize_requests(&self) -> Vec<Vec<(String, String)>> {
        self.shared.lock().authorize_requests.clone()
    }

    /// Every `/token` request's form parameters (secrets and verifiers included), in order.
    pub fn token_requests(&self) -> Vec<Vec<(String, String)>> {
        self.shared.lock().token_requests.clone()
    }

    /// Authorization codes issued by `/authorize`.
    pub fn issued_codes(&self) -> usize {
        self.shared.lock().issued_codes
    }

    /// Authorization codes successfully redeemed at `/token`.
    pub fn redeemed_codes(&self) -> usize {
        self.shared.lock().redeemed_codes
    }

    /// Successful `grant_type=refresh_token` requests.
    pub fn refreshes(&self) -> usize {
        self.shared.lock().refreshes
    }

    /// Requests to `/v1.0/me` (any outcome).
    pub fn graph_calls(&self) -> usize {
        self.shared.lock().graph_calls
    }

    /// Requests for an OpenID configuration document (any tenant, any outcome).
    pub fn discovery_fetches(&self) -> usize {
        self.shared.lock().discovery_fetches
    }

    /// Makes every access token issued so far expired: Graph answers 401 for them.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for grant in self.shared.lock().access_tokens.values_mut() {
            grant.expires = now;
        }
    }

    /// Forgets every refresh token issued so far (as if revoked): redeeming them fails.
    pub fn revoke_refresh_tokens(&self) {
        self.shared.lock().refresh_tokens.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for tests (more in fake_provider.rs)

/// Decodes base64 or base64url, padded or not; `None` on any other character or a bad length.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The JSON payload (middle segment) of a JWT-shaped token such as the fake's `id_token`.
pub fn decode_jwt_payload(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&b64_decode(payload)?).ok()
}

// ---------------------------------------------------------------------------------------------
// Server

const NO_CACHE: &str = "no-store, no-cache";

fn json_reply(status: u16, v: &Value) -> FakeReply {
    fake_provider::json_reply(
        status,
        v,
        &[("Cache-Control", NO_CACHE), ("Pragma", "no-cache")],
    )
}

fn redirect(location: String) -> FakeReply {
    fake_provider::redirect_reply(location, &[("Cache-Control", NO_CACHE)])
}

fn handle(shared: &Shared, request: &FakeRequest) -> FakeReply {
    let url = request.url.clone();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match lower.as_slice() {
        [_, "oauth2", "v2.0", "authorize"] => authorize(shared, request, segments[0], query),
        [_, "oauth2", "v2.0", "token"] => token(shared, request, segments[0]),
        [_, "v2.0", ".well-known", "openid-configuration"] => discovery(shared, segments[0]),
        ["v1.0", "me"] => graph_me(shared, request, query),
        _ => json_reply(
            404,
            &json!({"error": {"code": "NotFound", "message": format!("fake Microsoft: no route for {path}")}}),
        ),
    }
}

/// The directory itself: its GUID or one of its domains.
fn is_own_tenant(cfg: &FakeConfig, tenant: &str) -> bool {
    tenant.eq_ignore_ascii_case(&cfg.tenant_id)
        || cfg
            .tenant_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(tenant))
}

fn tenant_known(cfg: &FakeConfig, tenant: &str) -> bool {
    is_own_tenant(cfg, tenant)
        || tenant.eq_ignore_ascii_case("organizations")
        || tenant.eq_ignore_ascii_case("common")
}

fn tenant_not_found(tenant: &str) -> String {
    format!(
        "AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
         and are signing into the correct cloud. Check with your subscription administrator, this \
         may happen if there are no active subscriptions for the tenant."
    )
}

fn random_guid() -> String {
    let b = random_bytes(16);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn ms_timestamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace('T', " ")
}

/// The AADSTS number at the start of a description (`AADSTS70000: ...` -> 70000).
fn aadsts_code(description: &str) -> Option<u64> {
    let rest = description.strip_prefix("AADSTS")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A token-endpoint error in Microsoft's shape.
fn sts_error(status: u16, error: &str, description: &str) -> FakeReply {
    let (trace, correlation, ts) = (random_guid(), random_guid(), ms_timestamp());
    let full = format!(
        "{description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {ts}"
    );
    let codes: Vec<u64> = aadsts_code(description).into_iter().collect();
    json_reply(
        status,
        &json!({
            "error": error,
            "error_description": full,
            "error_codes": codes,
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": "https://login.microsoftonline.com/error",
        }),
    )
}

fn missing(name: &str) -> String {
    format!("AADSTS900144: The request body must contain the following parameter: '{name}'.")
}

/// The sign-in error page Microsoft shows instead of redirecting.
fn error_page(status: u16, description: &str) -> FakeReply {
    html_reply(
        status,
        format!(
            "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>\
             <h1>Sign in</h1><p>Sorry, but we're having trouble signing you in.</p>\
             <p id=\"error\">{}</p><p>Request Id: {}<br>Correlation Id: {}<br>Timestamp: {}</p>\
             </body></html>",
            html_escape(description),
            random_guid(),
            random_guid(),
            ms_timestamp()
        ),
    )
}

/// Sends `params` back to `redirect_uri` the way `response_mode` asks.
fn respond_to_client(redirect_uri: &str, mode: &str, params: &[(&str, &str)]) -> FakeReply {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    let encoded = ser.finish();
    match mode {
        "fragment" => redirect(format!("{redirect_uri}#{encoded}")),
        "form_post" => {
            let inputs: String = params
                .iter()
                .map(|(k, v)| {
                    format!(
                        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                        html_escape(k),
                        html_escape(v)
                    )
                })
                .collect();
            html_reply(
                200,
                format!(
                    "<html><body onload=\"document.forms[0].submit()\"><form method=\"POST\" \
                     action=\"{}\">{inputs}</form></body></html>",
                    html_escape(redirect_uri)
                ),
            )
        }
        _ => {
            let sep = if redirect_uri.contains('?') { '&' } else { '?' };
            redirect(format!("{redirect_uri}{sep}{encoded}"))
        }
    }
}

/// The first repeated key, if any (Microsoft rejects repeated parameters).
fn duplicated(params: &Params) -> Option<&str> {
    params.iter().enumerate().find_map(|(i, (k, _))| {
        params[..i]
            .iter()
            .any(|(earlier, _)| earlier == k)
            .then_some(k.as_str())
    })
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn is_oidc_scope(s: &str) -> bool {
    ["openid", "profile", "email", "offline_access"]
        .iter()
        .any(|o| s.eq_ignore_ascii_case(o))
}

fn has_scope(scopes: &[String], wanted: &str) -> bool {
    scopes.iter().any(|s| s.eq_ignore_ascii_case(wanted))
}

/// Graph scopes as Microsoft reports them: `https://graph.microsoft.com/` dropped, `.default`
/// as the app's configured permission (`User.Read`), `User.Read` when only OIDC scopes were asked.
fn resource_scopes(scopes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes.iter().filter(|s| !is_oidc_scope(s)) {
        let lower = s.to_ascii_lowercase();
        let short = if lower.starts_with("https://graph.microsoft.com/") {
            s["https://graph.microsoft.com/".len()..].to_string()
        } else if lower.starts_with("00000003-0000-0000-c000-000000000000/") {
            s[GRAPH_ID.len() + 1..].to_string()
        } else {
            s.clone()
        };
        let short = if short.eq_ignore_ascii_case(".default") {
            "User.Read".to_string()
        } else {
            short
        };
        if !has_scope(&out, &short) {
            out.push(short);
        }
    }
    if out.is_empty() {
        out.push("User.Read".into());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// /authorize

fn authorize(shared: &Shared, request: &FakeRequest, tenant: &str, query: &str) -> FakeReply {
    let params: Params = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut st = shared.lock();
    st.authorize_requests.push(params.clone());
    if request.method != "GET" {
        return error_page(
            405,
            "AADSTS900561: The fake accepts only GET at /authorize.",
        );
    }
    let cfg = st.cfg.clone();
    if !tenant_known(&cfg, tenant) {
        return error_page(400, &tenant_not_found(tenant));
    }
    if let Some(k) = duplicated(&params) {
        return error_page(
            400,
            &format!("AADSTS9002313: Invalid request. Request is malformed or invalid. - The request parameter '{k}' is duplicated."),
        );
    }
    let p = |k: &str| param(&params, k).map(str::to_string);
    let Some(client_id) = p("client_id") else {
        return error_page(400, &missing("client_id"));
    };
    if client_id != cfg.client_id {
        return error_page(
            400,
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the \
                 directory '{tenant}'. This can happen if the application has not been installed by \
                 the administrator of the tenant or consented to by any user in the tenant. You may \
                 have sent your authentication request to the wrong tenant."
            ),
        );
    }
    let Some(redirect_uri) = p("redirect_uri") else {
        return error_page(400, &missing("redirect_uri"));
    };
    if !cfg.redirect_uris.contains(&redirect_uri) {
        return error_page(
            400,
            &format!(
                "AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does not \
                 match the redirect URIs configured for the application '{client_id}'. Make sure the \
                 redirect URI sent in the request matches one added to your application in the \
                 Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more \
                 about how to fix this."
            ),
        );
    }
    // From here on, errors go back to the (registered) redirect URI.
    let state = p("state");
    let mode = p("response_mode").unwrap_or_else(|| "query".into());
    let fail = |error: &str, description: &str| {
        let mut out = vec![("error", error), ("error_description", description)];
        if let Some(s) = &state {
            out.push(("state", s.as_str()));
        }
        let mode = if matches!(mode.as_str(), "query" | "fragment" | "form_post") {
            mode.as_str()
        } else {
            "query"
        };
        respond_to_client(&redirect_uri, mode, &out)
    };
    if !matches!(mode.as_str(), "query" | "fragment" | "form_post") {
        return fail(
            "invalid_request",
            &format!("AADSTS900131: The value '{mode}' for 'response_mode' is not supported."),
        );
    }
    match p("response_type").as_deref() {
        None => return fail("invalid_request", &missing("response_type")),
        Some("code") => {}
        Some(other) => {
            return fail(
                "unsupported_response_type",
                &format!(
                    "AADSTS700054: response_type '{other}' is not enabled for the application."
                ),
            )
        }
    }
    let scopes = split_scopes(&p("scope").unwrap_or_default());
    if scopes.is_empty() {
        return fail("invalid_request", &missing("scope"));
    }
    let Some(challenge) = p("code_challenge") else {
        return fail("invalid_request", &missing("code_challenge"));
    };
    if p("code_challenge_method").as_deref() != Some("S256") {
        return fail(
            "invalid_request",
            "AADSTS501471: Invalid code_challenge_method: this app accepts only 'S256'.",
        );
    }
    if challenge.len() != 43 || !is_b64url(&challenge) {
        return fail(
            "invalid_request",
            "AADSTS501491: Invalid size of Code_Challenge parameter.",
        );
    }
    if let Some(prompt) = p("prompt") {
        if !["login", "none", "consent", "select_account", "create"].contains(&prompt.as_str()) {
            return fail(
                "invalid_request",
                &format!("AADSTS90023: Invalid prompt value '{prompt}'."),
            );
        }
    }
    if cfg.cancel {
        return fail(
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
        );
    }
    let code = format!("1.A{}", random_b64(96));
    st.codes.insert(
        code.clone(),
        CodeGrant {
            client_id,
            redirect_uri: redirect_uri.clone(),
            code_challenge: challenge,
            scopes,
            nonce: p("nonce"),
            user: User {
                tid: cfg.effective_user_tid(),
                oid: cfg.user_oid.clone(),
                upn: cfg.user_upn.clone(),
                mail: cfg.user_mail.clone(),
                email_claim: cfg.user_email_claim.clone().or(cfg.user_mail.clone()),
                name: cfg.user_name.clone(),
            },
            issued: Instant::now(),
            redeemed: false,
        },
    );
    st.issued_codes += 1;
    drop(st);
    let session = random_guid();
    let mut out = vec![("code", code.as_str())];
    if let Some(s) = &state {
        out.push(("state", s.as_str()));
    }
    out.push(("session_state", session.as_str()));
    respond_to_client(&redirect_uri, &mode, &out)
}

// ---------------------------------------------------------------------------------------------
// /token

fn token(shared: &Shared, request: &FakeRequest, tenant: &str) -> FakeReply {
    if request.method != "POST" {
        return sts_error(
            400,
            "invalid_request",
            &format!(
                "AADSTS900561: The endpoint only accepts POST, OPTIONS requests. Received a {} request.",
                request.method
            ),
        );
    }
    let is_form = request.header("content-type").is_some_and(|v| {
        v.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let basic = request.header("authorization").and_then(parse_basic);
    let body = &request.body;
    if body.len() > MAX_BODY {
        return sts_error(
            413,
            "invalid_request",
            "AADSTS90015: The request body is too large.",
        );
    }
    let form: Params = if is_form {
        form_urlencoded::parse(body).into_owned().collect()
    } else {
        Vec::new()
    };
    let delay = {
        let mut st = shared.lock();
        st.token_requests.push(form.clone());
        st.cfg.token_delay
    };
    shared.nap(delay);

    let mut st = shared.lock();
    let cfg = st.cfg.clone();
    if !tenant_known(&cfg, tenant) {
        return sts_error(400, "invalid_request", &tenant_not_found(tenant));
    }
    if let Some((status, error, description)) = &cfg.token_error {
        return sts_error(*status, error, description);
    }
    if let Some(k) = duplicated(&form) {
        return sts_error(
            400,
            "invalid_request",
            &format!("AADSTS9002313: Invalid request. Request is malformed or invalid. - The request parameter '{k}' is duplicated."),
        );
    }
    let f = |k: &str| param(&form, k).map(str::to_string);
    let Some(grant_type) = f("grant_type") else {
        return sts_error(400, "invalid_request", &missing("grant_type"));
    };
    if grant_type != "authorization_code" && grant_type != "refresh_token" {
        return sts_error(
            400,
            "unsupported_grant_type",
            &format!("AADSTS70003: The app requested an unsupported grant type '{grant_type}'."),
        );
    }
    // Client identification and authentication.
    let client_id = match (f("client_id"), &basic) {
        (Some(c), _) => c,
        (None, Some((c, _))) => c.clone(),
        (None, None) => return sts_error(400, "invalid_request", &missing("client_id")),
    };
    if client_id != cfg.client_id {
        return sts_error(
            400,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the \
                 directory '{tenant}'."
            ),
        );
    }
    let presented = f("client_secret").or_else(|| basic.as_ref().map(|(_, s)| s.clone()));
    match (&cfg.client_secret, presented) {
        (Some(_), None) => {
            return sts_error(
                401,
                "invalid_client",
                "AADSTS7000218: The request body must contain the following parameter: \
                 'client_assertion' or 'client_secret'.",
            )
        }
        (Some(expected), Some(given)) if *expected != given => {
            return sts_error(
                401,
                "invalid_client",
                &format!(
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in \
                     the request is the client secret value, not the client secret ID, for a secret \
                     added to app '{client_id}'."
                ),
            )
        }
        (None, Some(_)) => {
            return sts_error(
                401,
                "invalid_client",
                "AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' \
                 should be presented.",
            )
        }
        _ => {}
    }
    let asked = f("scope").map(|s| split_scopes(&s));

    let (scopes, user, nonce) = if grant_type == "authorization_code" {
        let Some(code) = f("code") else {
            return sts_error(400, "invalid_request", &missing("code"));
        };
        let Some(redirect_uri) = f("redirect_uri") else {
            return sts_error(400, "invalid_request", &missing("redirect_uri"));
        };
        let Some(grant) = st.codes.get_mut(&code) else {
            return sts_error(
                400,
                "invalid_grant",
                "AADSTS70000: The provided value for the 'code' parameter is not valid.",
            );
        };
        if grant.redeemed {
            return sts_error(
                400,
                "invalid_grant",
                "AADSTS54005: OAuth2 Authorization code was already redeemed, please retry with a \
                 new valid code or use an existing refresh token.",
            );
        }
        if grant.issued.elapsed() > cfg.code_lifetime {
            return sts_error(
                400,
                "invalid_grant",
                "AADSTS70008: The provided authorization code or refresh token has expired due to \
                 inactivity. Send a new interactive authorization request for this user and resource.",
            );
        }
        if grant.client_id != client_id {
            return sts_error(
                400,
                "invalid_grant",
                "AADSTS70000: The provided value for the 'code' parameter is not valid. The code \
                 was issued to a different client.",
            );
        }
        if grant.redirect_uri != redirect_uri {
            return sts_error(
                400,
                "invalid_grant",
                &format!(
                    "AADSTS500112: The reply address '{redirect_uri}' does not match the reply \
                     address '{}' provided when requesting Authorization code.",
                    grant.redirect_uri
                ),
            );
        }
        let Some(verifier) = f("code_verifier") else {
            return sts_error(
                400,
                "invalid_grant",
                "AADSTS50148: The code_verifier does not match the code_challenge supplied in the \
                 authorization request for PKCE.",
            );
        };
        if !is_pkce_verifier(&verifier) || pkce_challenge(&verifier) != grant.code_challenge {
            return sts_error(
                400,
                "invalid_grant",
                "AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the \
                 authorization request.",
            );
        }
        if let Err(reply) = check_subset(asked.as_deref(), &grant.scopes) {
            return reply;
        }
        grant.redeemed = true;
        let out = (
            grant.scopes.clone(),
            grant.user.clone(),
            grant.nonce.clone(),
        );
        st.redeemed_codes += 1;
        out
    } else {
        let Some(refresh) = f("refresh_token") else {
            return sts_error(400, "invalid_request", &missing("refresh_token"));
        };
        let Some(grant) = st.refresh_tokens.get(&refresh) else {
            return sts_error(
                400,
                "invalid_grant",
                "AADSTS9002313: Invalid request. Request is malformed or invalid. - The refresh \
                 token is not valid.",
            );
        };
        if grant.client_id != client_id {
            return sts_error(
                400,
                "invalid_grant",
                "AADSTS700005: Provided Authorization Code is intended to use against other \
                 tenant or client.",
            );
        }
        if let Err(reply) = check_subset(asked.as_deref(), &grant.scopes) {
            return reply;
        }
        let out = (grant.scopes.clone(), grant.user.clone(), None);
        st.refreshes += 1;
        out
    };

    // Issue.
    let resource: Vec<String> = match &asked {
        Some(a) if a.iter().any(|s| !is_oidc_scope(s)) => resource_scopes(a),
        _ => resource_scopes(&scopes),
    };
    let lifetime = cfg.access_token_lifetime_secs;
    let now = unix_now();
    let access_token = fake_jwt(&json!({
        "aud": GRAPH_ID,
        "iss": format!("https://sts.windows.net/{}/", user.tid),
        "iat": now, "nbf": now, "exp": now + lifetime,
        "appid": client_id,
        "scp": resource.join(" "),
        "tid": user.tid, "oid": user.oid, "upn": user.upn,
        "uti": random_b64(16),
        "ver": "1.0",
    }));
    st.access_tokens.insert(
        access_token.clone(),
        AccessGrant {
            scopes: resource.clone(),
            user: user.clone(),
            expires: Instant::now() + Duration::from_secs(lifetime),
        },
    );
    let mut body = json!({
        "token_type": "Bearer",
        "scope": resource.join(" "),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if has_scope(&scopes, "offline_access") && !cfg.omit_refresh_token {
        let refresh = format!("1.A{}", random_b64(192));
        st.refresh_tokens.insert(
            refresh.clone(),
            RefreshGrant {
                client_id: client_id.clone(),
                scopes: scopes.clone(),
                user: user.clone(),
            },
        );
        body["refresh_token"] = json!(refresh);
    }
    drop(st);
    if has_scope(&scopes, "openid") {
        let mut claims = json!({
            "aud": client_id,
            "iss": format!("{}/{}/v2.0", shared.base, user.tid),
            "iat": now, "nbf": now, "exp": now + 3600,
            "sub": b64url_encode(&ring::digest::digest(&ring::digest::SHA256,
                format!("{}|{}", user.oid, client_id).as_bytes()).as_ref()[..24]),
            "tid": user.tid,
            "ver": "2.0",
            "uti": random_b64(16),
        });
        if has_scope(&scopes, "profile") {
            claims["oid"] = json!(user.oid);
            claims["name"] = json!(user.name);
            claims["preferred_username"] = json!(user.upn);
        }
        if has_scope(&scopes, "email") {
            if let Some(email) = &user.email_claim {
                claims["email"] = json!(email);
            }
        }
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        if let Some(edov) = cfg.xms_edov {
            claims["xms_edov"] = json!(edov);
        }
        body["id_token"] = json!(fake_jwt(&claims));
    }
    json_reply(200, &body)
}

/// A requested `scope` at `/token` must stay within what was consented at `/authorize`.
fn check_subset(asked: Option<&[String]>, granted: &[String]) -> Result<(), FakeReply> {
    let Some(asked) = asked else { return Ok(()) };
    let granted_resource = resource_scopes(granted);
    let asked_resource: Vec<String> = if asked.iter().any(|s| !is_oidc_scope(s)) {
        resource_scopes(asked)
    } else {
        Vec::new()
    };
    match asked_resource
        .iter()
        .find(|s| !has_scope(&granted_resource, s))
    {
        Some(extra) => Err(sts_error(
            400,
            "invalid_grant",
            &format!(
                "AADSTS65001: The user or administrator has not consented to use the application \
                 with ID for the scope '{extra}'. Send an interactive authorization request for \
                 this user and resource."
            ),
        )),
        None => Ok(()),
    }
}

fn fake_jwt(payload: &Value) -> String {
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "fake"});
    format!(
        "{}.{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(payload.to_string().as_bytes()),
        random_b64(256)
    )
}

/// Microsoft takes base64 or base64url, padded or not.
fn parse_basic(value: &str) -> Option<(String, String)> {
    fake_provider::parse_basic_with(value, b64_decode)
}

// ---------------------------------------------------------------------------------------------
// Discovery and Graph

fn discovery(shared: &Shared, tenant: &str) -> FakeReply {
    let cfg = {
        let mut st = shared.lock();
        st.discovery_fetches += 1;
        st.cfg.clone()
    };
    if !tenant_known(&cfg, tenant) {
        return sts_error(400, "invalid_tenant", &tenant_not_found(tenant));
    }
    let issuer_tenant = if is_own_tenant(&cfg, tenant) {
        cfg.tenant_id.clone()
    } else {
        "{tenantid}".to_string()
    };
    let b = &shared.base;
    json_reply(
        200,
        &json!({
            "issuer": format!("{b}/{issuer_tenant}/v2.0"),
            "authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/authorize"),
            "token_endpoint": format!("{b}/{tenant}/oauth2/v2.0/token"),
            "jwks_uri": format!("{b}/{tenant}/discovery/v2.0/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["pairwise"],
            "tenant_region_scope": "EU",
            "msgraph_host": b,
        }),
    )
}

fn graph_error(status: u16, code: &str, message: &str) -> FakeReply {
    let mut r = json_reply(
        status,
        &json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                "request-id": random_guid(),
                "client-request-id": random_guid(),
            }
        }}),
    );
    if status == 401 {
        r.headers.push((
            "WWW-Authenticate",
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"".into(),
        ));
    }
    r
}

const ME_READ_SCOPES: &[&str] = &[
    "User.Read",
    "User.ReadWrite",
    "User.ReadBasic.All",
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

fn graph_me(shared: &Shared, request: &FakeRequest, query: &str) -> FakeReply {
    let delay = {
        let mut st = shared.lock();
        st.graph_calls += 1;
        st.cfg.graph_delay
    };
    shared.nap(delay);
    if request.method != "GET" {
        return graph_error(
            405,
            "Request_BadRequest",
            "Specified HTTP method is not allowed for the request target.",
        );
    }
    let st = shared.lock();
    if st.cfg.graph_fail {
        return graph_error(
            500,
            "generalException",
            "General exception while processing.",
        );
    }
    let bearer = request.header("authorization").and_then(|v| {
        let v = v.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    let Some(bearer) = bearer.filter(|t| !t.is_empty()) else {
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
    };
    let Some(grant) = st.access_tokens.get(&bearer) else {
        let message = if bearer.split('.').count() == 3 {
            "Access token validation failure. Invalid audience."
        } else {
            "IDX14100: JWT is not well formed, there are no dots (.).\nThe token needs to be in JWS or JWE Compact Serialization Format."
        };
        return graph_error(401, "InvalidAuthenticationToken", message);
    };
    if Instant::now() >= grant.expires {
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        );
    }
    if !ME_READ_SCOPES.iter().any(|s| has_scope(&grant.scopes, s)) {
        return graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    let u = grant.user.clone();
    drop(st);
    let (given, surname) = match u.name.split_once(' ') {
        Some((g, s)) => (json!(g), json!(s)),
        None => (json!(u.name), Value::Null),
    };
    let full = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
        "businessPhones": [],
        "displayName": u.name,
        "givenName": given,
        "jobTitle": null,
        "mail": u.mail,
        "mobilePhone": null,
        "officeLocation": null,
        "preferredLanguage": null,
        "surname": surname,
        "userPrincipalName": u.upn,
        "id": u.oid,
    });
    let params: Params = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let body = match param(&params, "$select") {
        None => full,
        Some(select) => {
            let mut out = serde_json::Map::new();
            out.insert(
                "@odata.context".into(),
                json!(format!(
                    "https://graph.microsoft.com/v1.0/$metadata#users({select})/$entity"
                )),
            );
            for field in select.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                let key = full
                    .as_object()
                    .and_then(|o| o.keys().find(|k| k.eq_ignore_ascii_case(field)).cloned());
                match key {
                    Some(k) if k != "@odata.context" => {
                        out.insert(k.clone(), full[&k].clone());
                    }
                    _ => {
                        return graph_error(
                            400,
                            "BadRequest",
                            &format!(
                                "Could not find a property named '{field}' on type 'microsoft.graph.user'."
                            ),
                        )
                    }
                }
            }
            Value::Object(out)
        }
    };
    let mut r = json_reply(200, &body);
    r.headers[0].1 =
        "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
            .into();
    r.headers.push(("request-id", random_guid()));
    r
}
