//! A fake Microsoft identity platform (v2.0 authorize/token endpoints by tenant) and Microsoft
//! Graph (`GET /v1.0/me`, `POST /v1.0/me/revokeSignInSessions`) on one plain-HTTP port, on the
//! authorization-server core of fake_as.rs. What is Microsoft's own, and kept here: tenants
//! (GUID, verified domains, `organizations`, `common`) and their discovery documents, errors
//! with Microsoft's shape and AADSTS codes (an error page and no redirect before the redirect
//! URI is known, `response_mode` after), repeated parameters refused, S256 PKCE only, the
//! confidential-client rule (a "Web" app must authenticate: AADSTS7000218; a public one must
//! not send a secret: AADSTS700025), the token's `scope` within what was consented,
//! `refresh_token` only with `offline_access`, rotated on every use with the old one still
//! valid (`RefreshPolicy::entra()`, 90 days), `id_token` only with `openid` and its claims by
//! scope (`oid`, `name`, `preferred_username` need `profile`; `email` needs `email`;
//! `xms_edov`), and Graph's answers. Access tokens are JWTs Graph accepts until they expire,
//! revoked sessions or not.
//!
//! The user "signs in" without a form: `/authorize` answers at once with the redirect. Who signed
//! in is fixed when the code is issued (a later `set` changes later sign-ins only); behaviours
//! (`cancel`, delays, injected errors, ...) are read when each request arrives.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::fake_as::{
    check_authorize, AsState, AuthorizeError, AuthorizeRules, ClientError, ClientRule, CodeError,
    Grant, Params, PkceRules, RefreshError, RefreshPolicy, TokenError, TokenQuirks, TokenRules,
};
use super::fake_http::{FakeReply, FakeRequest};
// The helpers tests use, under this fake's name (not every test crate uses them all).
#[allow(unused_imports)]
pub use super::fake_provider::{b64url_encode, param, pkce_challenge, pkce_verifier, query_params};
use super::fake_provider::{
    html_escape, html_reply, random_b64, random_bytes, unix_now, Core, Running,
};

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
    /// What a used refresh token becomes: `RefreshPolicy::entra()`.
    pub refresh_policy: RefreshPolicy,
    /// How long a refresh token lives: 90 days (24 hours for single-page apps).
    pub refresh_token_lifetime: Duration,
    /// Sleep this long before answering `/token` (a slow identity provider; one-shot faults:
    /// `inject_token_fault`).
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
            refresh_policy: RefreshPolicy::entra(),
            refresh_token_lifetime: Duration::from_secs(90 * 24 * 3600),
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

/// Who signed in, fixed when the code was issued.
#[derive(Clone, Debug)]
pub struct User {
    tid: String,
    oid: String,
    upn: String,
    mail: Option<String>,
    email_claim: Option<String>,
    name: String,
}

/// What is Microsoft's own: counters of Graph and discovery.
#[derive(Default)]
pub struct MicrosoftOwn {
    graph_calls: usize,
    discovery_fetches: usize,
}

type State = AsState<FakeConfig, User, MicrosoftOwn>;
type Shared = Core<State>;

/// A running fake on `127.0.0.1:<free port>`; stopped (threads joined) on drop. The core's
/// methods (`config`, `set`, `counters`, `inject_token_fault`, ...) come with it.
pub type FakeMicrosoft = Running<State>;

const MAX_BODY: usize = 64 * 1024;
const GRAPH_ID: &str = "00000003-0000-0000-c000-000000000000";

impl FakeMicrosoft {
    /// Starts with `FakeConfig::default()`.
    pub fn start() -> FakeMicrosoft {
        FakeMicrosoft::start_with(FakeConfig::default())
    }

    /// Starts with `cfg`.
    pub fn start_with(cfg: FakeConfig) -> FakeMicrosoft {
        let state = AsState::new(cfg, MicrosoftOwn::default());
        Running::serve("fake-microsoft", state, (), handle)
    }

    /// `{base}/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.base)
    }

    /// `{base}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.base)
    }

    /// `{base}/v1.0/me`.
    pub fn graph_me_url(&self) -> String {
        format!("{}/v1.0/me", self.base)
    }

    /// `{base}/v1.0/me/revokeSignInSessions`: ends every refresh token of the token's user.
    pub fn revoke_sessions_url(&self) -> String {
        format!("{}/v1.0/me/revokeSignInSessions", self.base)
    }

    /// Requests to `/v1.0/me` (any outcome).
    pub fn graph_calls(&self) -> usize {
        self.lock().own.graph_calls
    }

    /// Requests for an OpenID configuration document (any tenant, any outcome).
    pub fn discovery_fetches(&self) -> usize {
        self.lock().own.discovery_fetches
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
    super::fake_provider::json_reply(
        status,
        v,
        &[("Cache-Control", NO_CACHE), ("Pragma", "no-cache")],
    )
}

fn redirect(location: String) -> FakeReply {
    super::fake_provider::redirect_reply(location, &[("Cache-Control", NO_CACHE)])
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
        ["v1.0", "me", "revokesigninsessions"] => revoke_sessions(shared, request),
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
    st.auth.authorize_requests.push(params.clone());
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
    let mode = p("response_mode").unwrap_or_else(|| "query".into());
    let valid_mode = matches!(mode.as_str(), "query" | "fragment" | "form_post");
    // Once the redirect URI is known, errors go back to it, the way response_mode asks.
    let fail = |redirect_uri: &str, error: &str, description: &str| {
        let mut out = vec![("error", error), ("error_description", description)];
        if let Some(s) = param(&params, "state") {
            out.push(("state", s));
        }
        respond_to_client(redirect_uri, if valid_mode { &mode } else { "query" }, &out)
    };
    let rules = AuthorizeRules {
        client_id: &cfg.client_id,
        redirect_uris: &cfg.redirect_uris,
        default_redirect_uri: false,
        response_type: true,
        require_scope: true,
        require_state: false,
        pkce: PkceRules {
            required: true,
            methods: &["S256"],
            default_method: None,
        },
    };
    let request = match check_authorize(&params, &rules) {
        Ok(request) => request,
        Err(refusal) => {
            let description = match &refusal.error {
                AuthorizeError::MissingClientId => missing("client_id"),
                AuthorizeError::UnknownClient(client_id) => format!(
                    "AADSTS700016: Application with identifier '{client_id}' was not found in \
                     the directory '{tenant}'. This can happen if the application has not been \
                     installed by the administrator of the tenant or consented to by any user \
                     in the tenant. You may have sent your authentication request to the wrong \
                     tenant."
                ),
                AuthorizeError::MissingRedirectUri => missing("redirect_uri"),
                AuthorizeError::UnregisteredRedirectUri(uri) => format!(
                    "AADSTS50011: The redirect URI '{uri}' specified in the request does not \
                     match the redirect URIs configured for the application '{}'. Make sure \
                     the redirect URI sent in the request matches one added to your \
                     application in the Azure portal. Navigate to \
                     https://aka.ms/redirectUriMismatchError to learn more about how to fix \
                     this.",
                    cfg.client_id
                ),
                AuthorizeError::MissingResponseType => missing("response_type"),
                AuthorizeError::UnsupportedResponseType(other) => format!(
                    "AADSTS700054: response_type '{other}' is not enabled for the application."
                ),
                AuthorizeError::MissingScope => missing("scope"),
                AuthorizeError::MissingState | AuthorizeError::MissingChallenge => {
                    missing("code_challenge")
                }
                AuthorizeError::UnsupportedChallengeMethod(_) => {
                    "AADSTS501471: Invalid code_challenge_method: this app accepts only 'S256'."
                        .into()
                }
                AuthorizeError::InvalidChallenge => {
                    "AADSTS501491: Invalid size of Code_Challenge parameter.".into()
                }
            };
            let error = match refusal.error {
                AuthorizeError::UnsupportedResponseType(_) => "unsupported_response_type",
                _ => "invalid_request",
            };
            return match &refusal.redirect_uri {
                Some(redirect_uri) => fail(redirect_uri, error, &description),
                None => error_page(400, &description),
            };
        }
    };
    let redirect_uri = &request.redirect_uri;
    if !valid_mode {
        return fail(
            redirect_uri,
            "invalid_request",
            &format!("AADSTS900131: The value '{mode}' for 'response_mode' is not supported."),
        );
    }
    if let Some(prompt) = p("prompt") {
        if !["login", "none", "consent", "select_account", "create"].contains(&prompt.as_str()) {
            return fail(
                redirect_uri,
                "invalid_request",
                &format!("AADSTS90023: Invalid prompt value '{prompt}'."),
            );
        }
    }
    if cfg.cancel {
        return fail(
            redirect_uri,
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
        );
    }
    let user = User {
        tid: cfg.effective_user_tid(),
        oid: cfg.user_oid.clone(),
        upn: cfg.user_upn.clone(),
        mail: cfg.user_mail.clone(),
        email_claim: cfg.user_email_claim.clone().or(cfg.user_mail.clone()),
        name: cfg.user_name.clone(),
    };
    let scopes = split_scopes(&request.scope);
    let code = format!("1.A{}", random_b64(96));
    let code = st.auth.issue_code(code, &request, scopes, user);
    drop(st);
    let session = random_guid();
    let mut out = vec![("code", code.as_str())];
    if let Some(s) = &request.state {
        out.push(("state", s.as_str()));
    }
    out.push(("session_state", session.as_str()));
    respond_to_client(redirect_uri, &mode, &out)
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
    if request.body.len() > MAX_BODY {
        return sts_error(
            413,
            "invalid_request",
            "AADSTS90015: The request body is too large.",
        );
    }
    let form: Params = if is_form {
        form_urlencoded::parse(&request.body).into_owned().collect()
    } else {
        Vec::new()
    };
    shared.serve_token(
        form,
        |c| c.token_delay,
        |st, form| token_grant(shared, st, form, basic.as_ref(), tenant),
    )
}

fn token_grant(
    shared: &Shared,
    st: &mut State,
    form: &Params,
    basic: Option<&(String, String)>,
    tenant: &str,
) -> FakeReply {
    let cfg = st.cfg.clone();
    if !tenant_known(&cfg, tenant) {
        return sts_error(400, "invalid_request", &tenant_not_found(tenant));
    }
    if let Some((status, error, description)) = &cfg.token_error {
        return sts_error(*status, error, description);
    }
    if let Some(k) = duplicated(form) {
        return sts_error(
            400,
            "invalid_request",
            &format!("AADSTS9002313: Invalid request. Request is malformed or invalid. - The request parameter '{k}' is duplicated."),
        );
    }
    let asked = param(form, "scope").map(split_scopes);
    // A "Web" registration is a confidential client; "Mobile and desktop" a public one.
    let rules = TokenRules {
        client: ClientRule {
            client_id: &cfg.client_id,
            secret: cfg.client_secret.as_deref(),
        },
        default_grant_type: None,
        client_first: false,
        redirect_uri_required: true,
        code_lifetime: cfg.code_lifetime,
        refresh_policy: cfg.refresh_policy,
        refresh_lifetime: Some(cfg.refresh_token_lifetime),
    };
    let quirks = MicrosoftTokens {
        cfg: &cfg,
        tenant,
        asked: asked.as_deref(),
        redirect_uri: param(form, "redirect_uri").unwrap_or(""),
    };
    let granted = match st.auth.token(form, basic, &rules, &quirks) {
        Ok(granted) => granted,
        Err(reply) => return reply,
    };
    let (grant, client_id, nonce) = (granted.grant, granted.client_id, granted.nonce);
    let refresh_token = granted.refresh_token.filter(|_| !cfg.omit_refresh_token);

    // Issue.
    let user = st.auth.grant(grant).user.clone();
    let scopes = st.auth.grant(grant).scopes.clone();
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
    let expires = Some(Duration::from_secs(lifetime));
    st.auth
        .issue_access(access_token.clone(), grant, resource.clone(), expires);
    let mut body = json!({
        "token_type": "Bearer",
        "scope": resource.join(" "),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if let Some(refresh) = refresh_token {
        body["refresh_token"] = json!(refresh);
    }
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

/// Microsoft's side of a token request: AADSTS errors, scopes within consent, `offline_access`.
struct MicrosoftTokens<'a> {
    cfg: &'a FakeConfig,
    tenant: &'a str,
    /// The request's `scope`, if any.
    asked: Option<&'a [String]>,
    redirect_uri: &'a str,
}

impl TokenQuirks<User> for MicrosoftTokens<'_> {
    fn refuse(&self, e: TokenError) -> FakeReply {
        let (status, error, description) = match e {
            TokenError::Missing(name) => (400, "invalid_request", missing(name)),
            TokenError::UnsupportedGrantType(other) => (
                400,
                "unsupported_grant_type",
                format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
            ),
            TokenError::Client(e) => client_error(e, self.tenant, &self.cfg.client_id),
            TokenError::Code(e) => (400, "invalid_grant", code_error(e, self.redirect_uri)),
            TokenError::Refresh(e) => (400, "invalid_grant", refresh_error(e, self.cfg)),
        };
        sts_error(status, error, &description)
    }

    fn new_refresh_token(&self) -> String {
        format!("1.A{}", random_b64(192))
    }

    /// Refresh tokens come only with `offline_access`.
    fn refresh_on_code(&self, grant: &Grant<User>) -> bool {
        has_scope(&grant.scopes, "offline_access") && !self.cfg.omit_refresh_token
    }

    fn check(&self, granted: &[String]) -> Result<(), FakeReply> {
        check_subset(self.asked, granted)
    }
}

/// A client the core refused, in Microsoft's words.
fn client_error(e: ClientError, tenant: &str, client_id: &str) -> (u16, &'static str, String) {
    match e {
        ClientError::MissingId => (400, "invalid_request", missing("client_id")),
        ClientError::UnknownId(id) => (
            400,
            "unauthorized_client",
            format!(
                "AADSTS700016: Application with identifier '{id}' was not found in the \
                 directory '{tenant}'."
            ),
        ),
        ClientError::MissingSecret => (
            401,
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: \
             'client_assertion' or 'client_secret'."
                .into(),
        ),
        ClientError::WrongSecret => (
            401,
            "invalid_client",
            format!(
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in \
                 the request is the client secret value, not the client secret ID, for a secret \
                 added to app '{client_id}'."
            ),
        ),
        ClientError::SecretFromPublicClient => (
            401,
            "invalid_client",
            "AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' \
             should be presented."
                .into(),
        ),
    }
}

/// A code the core refused, in Microsoft's words.
fn code_error(e: CodeError, redirect_uri: &str) -> String {
    match e {
        CodeError::Unknown => {
            "AADSTS70000: The provided value for the 'code' parameter is not valid.".into()
        }
        CodeError::Redeemed => "AADSTS54005: OAuth2 Authorization code was already redeemed, \
                                please retry with a new valid code or use an existing refresh \
                                token."
            .into(),
        CodeError::Expired => "AADSTS70008: The provided authorization code or refresh token has \
                               expired due to inactivity. Send a new interactive authorization \
                               request for this user and resource."
            .into(),
        CodeError::OtherClient => "AADSTS70000: The provided value for the 'code' parameter is \
                                   not valid. The code was issued to a different client."
            .into(),
        CodeError::RedirectMismatch { expected } => format!(
            "AADSTS500112: The reply address '{redirect_uri}' does not match the reply address \
             '{expected}' provided when requesting Authorization code."
        ),
        CodeError::MissingVerifier => "AADSTS50148: The code_verifier does not match the \
                                       code_challenge supplied in the authorization request for \
                                       PKCE."
            .into(),
        CodeError::WrongVerifier => "AADSTS501481: The Code_Verifier does not match the \
                                     code_challenge supplied in the authorization request."
            .into(),
    }
}

/// A refresh token the core refused, in Microsoft's words.
fn refresh_error(e: RefreshError, cfg: &FakeConfig) -> String {
    match e {
        RefreshError::Unknown => "AADSTS9002313: Invalid request. Request is malformed or \
                                  invalid. - The refresh token is not valid."
            .into(),
        RefreshError::OtherClient => "AADSTS700005: Provided Authorization Code is intended to \
                                      use against other tenant or client."
            .into(),
        RefreshError::Expired => format!(
            "AADSTS700082: The refresh token has expired due to inactivity. The token was \
             inactive for {} days.",
            cfg.refresh_token_lifetime.as_secs() / 86_400
        ),
        // An administrator revoked the user's sessions, or the password changed.
        RefreshError::Revoked => "AADSTS50173: The provided grant has expired due to it being \
                                  revoked, a fresh auth token is needed. The user might have \
                                  changed or reset their password."
            .into(),
        // Only under a one-time policy a test gave this fake; Entra keeps old tokens valid.
        RefreshError::Reused => "AADSTS70000: Provided grant is invalid or malformed.".into(),
    }
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
    super::fake_provider::parse_basic_with(value, b64_decode)
}

// ---------------------------------------------------------------------------------------------
// Discovery and Graph

fn discovery(shared: &Shared, tenant: &str) -> FakeReply {
    let cfg = {
        let mut st = shared.lock();
        st.own.discovery_fetches += 1;
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

/// The grant behind a Graph request's bearer token, or Graph's answer when there is none.
/// Revoked sessions do not matter: access tokens are JWTs, valid until they expire.
fn bearer_grant(st: &State, request: &FakeRequest) -> Result<(Vec<String>, User), FakeReply> {
    let bearer = request.header("authorization").and_then(|v| {
        let v = v.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    let Some(bearer) = bearer.filter(|t| !t.is_empty()) else {
        return Err(graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        ));
    };
    let Some((access, grant)) = st.auth.access(&bearer) else {
        let message = if bearer.split('.').count() == 3 {
            "Access token validation failure. Invalid audience."
        } else {
            "IDX14100: JWT is not well formed, there are no dots (.).\nThe token needs to be in JWS or JWE Compact Serialization Format."
        };
        return Err(graph_error(401, "InvalidAuthenticationToken", message));
    };
    if access.expired() {
        return Err(graph_error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        ));
    }
    Ok((access.scopes.clone(), grant.user.clone()))
}

fn graph_me(shared: &Shared, request: &FakeRequest, query: &str) -> FakeReply {
    let delay = {
        let mut st = shared.lock();
        st.own.graph_calls += 1;
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
    let (scopes, u) = match bearer_grant(&st, request) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    if !ME_READ_SCOPES.iter().any(|s| has_scope(&scopes, s)) {
        return graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
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

/// `POST /v1.0/me/revokeSignInSessions` (Graph's `user: revokeSignInSessions`): every refresh
/// token of the signed-in user ends (they answer AADSTS50173); access tokens stay valid until
/// they expire. Needs `User.RevokeSessions.All` (or `Directory.AccessAsUser.All`).
fn revoke_sessions(shared: &Shared, request: &FakeRequest) -> FakeReply {
    let st = &mut *shared.lock();
    if request.method != "POST" {
        return graph_error(
            405,
            "Request_BadRequest",
            "Specified HTTP method is not allowed for the request target.",
        );
    }
    let (scopes, user) = match bearer_grant(st, request) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let allowed = ["User.RevokeSessions.All", "Directory.AccessAsUser.All"];
    if !allowed.iter().any(|s| has_scope(&scopes, s)) {
        return graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    st.auth.revoke_grants_where(|g| g.user.oid == user.oid);
    st.auth.counters.revocations += 1;
    json_reply(
        200,
        &json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean",
            "value": true,
        }),
    )
}
