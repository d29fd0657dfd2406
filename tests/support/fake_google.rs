//! A fake Google (OpenID Connect) on one plain-HTTP port, with Google's paths, on the
//! authorization-server core of fake_as.rs: discovery (`/.well-known/openid-configuration`),
//! authorize (`/o/oauth2/v2/auth`), token (`/token`), keys (`/oauth2/v3/certs`), userinfo
//! (`/v1/userinfo`) and revocation (`/revoke`, `https://oauth2.googleapis.com/revoke` in
//! production). What is Google's own, and kept here:
//!
//! - authorize: error pages (no redirect) for an unknown client (`Error 401: invalid_client`),
//!   a `redirect_uri` that is not registered byte for byte (`Error 400: redirect_uri_mismatch`)
//!   and malformed requests (`Error 400: invalid_request`, Google's scope names, `access_type`,
//!   `prompt`); `error=access_denied` back to the client when the user refuses; PKCE `S256` or
//!   `plain`. The callback carries `state`, `code`, `scope`, `authuser`, `hd` (Workspace
//!   users), `prompt`, and no `iss` (Google does not advertise
//!   `authorization_response_iss_parameter_supported`). Stricter than Google, on purpose and
//!   switchable: `state`, PKCE and the `openid` scope are required by default.
//! - token: Google's error bodies and statuses (`invalid_grant` / `Bad Request` with 400,
//!   `invalid_client` with 401, ...). The answer has an RS256 `id_token` signed with the
//!   current key (`kid` in the header) with `hd` and `email_verified` claims, and a
//!   `refresh_token` only when the authorize request had `access_type=offline` and
//!   `prompt=consent`. Refresh tokens are not rotated (`RefreshPolicy::google()`); revoking a
//!   refresh or an access token ends the grant ("if the token is an access token and it has a
//!   corresponding refresh token, the refresh token will also be revoked").
//! - keys: the JWKS publishes the current key; `rotate_keys` switches signing to the other key
//!   (both published until `unpublish_old_keys`); fetches are counted.
//! - hostile id_tokens for negative tests: `set_next_id_token_tamper(Tamper::...)`.
//!
//! The person signing in: fetching the authorize URL over HTTP signs in `FakeGoogleConfig::user`
//! at once, and a test picks anyone with `FakeGoogle::sign_in(url, &user)` or refuses with
//! `FakeGoogle::decline(url)`. Who signed in is fixed when the code is issued.
//!
//! Signing keys are test-only fixtures in `tests/fixtures/keys/` (see the README there).
#![allow(dead_code)]

use std::time::Duration;

use base64::Engine;
use ring::signature::{KeyPair, RsaKeyPair};
use serde_json::{json, Value};

use super::fake_as::{
    check_authorize, AsState, AuthorizeError, AuthorizeRules, ClientError, ClientRule, CodeError,
    Grant, Params, PkceRules, RefreshError, RefreshPolicy, TokenError, TokenQuirks, TokenRules,
    Who,
};
use super::fake_http::{FakeReply, FakeRequest};
// The helpers tests use, under this fake's name (not every test crate uses them all).
#[allow(unused_imports)]
pub use super::fake_provider::{
    b64url_decode, b64url_encode, param, pkce_challenge, pkce_verifier, query_params, SignInError,
};
use super::fake_provider::{
    html_escape, parse_basic, random_b64, reply, request_params, unix_now, with_query, Core,
    Running,
};

pub const DEFAULT_CLIENT_ID: &str =
    "404118260315-f4k3g00g1ec11ent0example.apps.googleusercontent.com";
pub const DEFAULT_CLIENT_SECRET: &str = "GOCSPX-FakeGoogleClientSecret0001";
pub const DEFAULT_REDIRECT_URI: &str = "http://localhost/callback";

/// The two signing keys the fake rotates between, and one it never publishes (forgeries).
const KEY_PKCS8: [&[u8]; 3] = [
    include_bytes!("../fixtures/keys/google-1.pk8"),
    include_bytes!("../fixtures/keys/google-2.pk8"),
    include_bytes!("../fixtures/keys/forger.pk8"),
];
const FORGER: usize = 2;

const SCOPE_EMAIL: &str = "https://www.googleapis.com/auth/userinfo.email";
const SCOPE_PROFILE: &str = "https://www.googleapis.com/auth/userinfo.profile";

/// A Google account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoogleUser {
    /// The stable id (`sub`): a numeric string, never reassigned.
    pub sub: String,
    pub email: String,
    /// `email_verified`: `false` happens (e.g. a Google account made with another provider's
    /// address that was never confirmed).
    pub email_verified: bool,
    /// The Workspace domain (`hd` claim); `None` for consumer (gmail.com) accounts.
    pub hd: Option<String>,
    pub name: String,
    pub given_name: String,
    pub family_name: String,
    pub picture: String,
}

impl GoogleUser {
    /// A consumer account with a verified address.
    pub fn new(sub: &str, email: &str) -> GoogleUser {
        let local = email.split('@').next().unwrap_or(email);
        let (given, family) = local.split_once('.').unwrap_or((local, ""));
        let cap = |s: &str| {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        };
        let (given_name, family_name) = (cap(given), cap(family));
        GoogleUser {
            sub: sub.into(),
            email: email.into(),
            email_verified: true,
            hd: None,
            name: format!("{given_name} {family_name}").trim().to_string(),
            given_name,
            family_name,
            picture: format!("https://lh3.googleusercontent.com/a/{sub}=s96-c"),
        }
    }

    /// A Workspace account of `hd` with a verified address.
    pub fn workspace(sub: &str, email: &str, hd: &str) -> GoogleUser {
        GoogleUser {
            hd: Some(hd.into()),
            ..GoogleUser::new(sub, email)
        }
    }
}

/// A hostile change to an id_token, for the broker's negative tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Tamper {
    /// Signed with a key that is not in the JWKS, under the `kid` of the current (published)
    /// key: the signature does not verify.
    ForgedSignature,
    /// Signed with a key that is not in the JWKS, under a `kid` the JWKS never had: a verifier
    /// refetches the JWKS (once) and still cannot find it.
    UnknownKid,
    /// `aud` and `azp` are another client's id (a token Google issued to another app).
    WrongAud,
    /// `iss` is another issuer (`https://accounts.google.example.invalid`).
    WrongIss,
    /// `nonce` differs from the one of the authorize request (present even if none was sent).
    WrongNonce,
    /// The id_token of the previous token response, byte for byte (a replay: old `nonce`,
    /// valid signature). Untampered when there was no previous one.
    ReplayPrevious,
    /// `iat` two hours ago and `exp` one hour ago.
    Expired,
    /// `iat` one hour ahead (issued in the future).
    IssuedInFuture,
    /// Header `alg: none` and an empty signature.
    AlgNone,
    /// Header `alg: HS256` (same `kid`), HMAC-SHA256 keyed with the current key's public key
    /// as PEM text (`FakeGoogle::public_key_pem`): the classic algorithm-confusion attack.
    Hs256WithPublicKey,
    /// Claims merged into the token before signing (properly, with the current key); a JSON
    /// `null` removes the claim. E.g. `Tamper::Claims(json!({"email_verified": "true"}))`.
    Claims(Value),
}

/// The fake's settings. Set at start (`FakeGoogle::start_with`) or later (`FakeGoogle::set`).
#[derive(Clone, Debug)]
pub struct FakeGoogleConfig {
    pub client_id: String,
    /// Checked at the token endpoint (form `client_secret` or HTTP Basic).
    pub client_secret: String,
    /// Registered redirect URIs: the authorize and token `redirect_uri` must equal one byte for
    /// byte.
    pub redirect_uris: Vec<String>,
    /// Who signs in when the authorize URL is fetched over HTTP (a browser).
    pub user: GoogleUser,
    /// The issuer advertised by discovery and put in id_tokens; `None`: the base URL
    /// (`http://127.0.0.1:PORT`). Set it to something else to test the exact-issuer check.
    pub issuer: Option<String>,
    /// The user refuses: the authorize endpoint fetched over HTTP redirects back with
    /// `error=access_denied` (`sign_in` is an explicit choice and ignores it; `decline` refuses).
    pub cancel: bool,
    /// Refuse an authorize request without `state` (Google does not; the broker must send it).
    pub require_state: bool,
    /// Refuse an authorize request without `code_challenge` (Google does not for web clients).
    pub require_pkce: bool,
    /// Refuse an authorize request whose scope lacks `openid` (Google would just issue no
    /// id_token; `false` reproduces that).
    pub require_openid: bool,
    /// How long a code can be redeemed.
    pub code_lifetime: Duration,
    /// `expires_in` of access tokens (Google: 3599).
    pub access_token_lifetime_secs: u64,
    /// `exp - iat` of id_tokens (Google: 3600).
    pub id_token_lifetime_secs: u64,
    /// Applied to every id_token (a one-shot `set_next_id_token_tamper` takes precedence).
    pub id_token_tamper: Option<Tamper>,
    /// Refresh tokens do not rotate: `RefreshPolicy::google()`.
    pub refresh_policy: RefreshPolicy,
    /// `None` (Google in production): refresh tokens do not expire with time; 7 days for an app
    /// in "Testing" status.
    pub refresh_token_lifetime: Option<Duration>,
    /// Sleep this long before answering the token endpoint (one-shot faults:
    /// `inject_token_fault`).
    pub token_delay: Duration,
    /// Sleep this long before answering the JWKS.
    pub jwks_delay: Duration,
    /// Sleep this long before answering userinfo.
    pub userinfo_delay: Duration,
    /// Answer every token request with this `(status, error, error_description)`, before any
    /// validation; the code stays unredeemed.
    pub token_error: Option<(u16, String, String)>,
    /// The discovery document answers this status (with a Google-like error page).
    pub discovery_error: Option<u16>,
    /// The JWKS answers this status.
    pub jwks_error: Option<u16>,
}

impl Default for FakeGoogleConfig {
    fn default() -> Self {
        FakeGoogleConfig {
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            redirect_uris: vec![DEFAULT_REDIRECT_URI.into()],
            user: GoogleUser::new("108236457120987654321", "ana.silva@gmail.com"),
            issuer: None,
            cancel: false,
            require_state: true,
            require_pkce: true,
            require_openid: true,
            code_lifetime: Duration::from_secs(600),
            access_token_lifetime_secs: 3599,
            id_token_lifetime_secs: 3600,
            id_token_tamper: None,
            refresh_policy: RefreshPolicy::google(),
            refresh_token_lifetime: None,
            token_delay: Duration::ZERO,
            jwks_delay: Duration::ZERO,
            userinfo_delay: Duration::ZERO,
            token_error: None,
            discovery_error: None,
            jwks_error: None,
        }
    }
}

/// One of the fake's signing keys (fixed at start).
pub struct RsaKey {
    pair: RsaKeyPair,
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
    /// SubjectPublicKeyInfo as PEM text.
    pem: String,
}

impl RsaKey {
    fn load(pkcs8: &[u8]) -> RsaKey {
        let pair = RsaKeyPair::from_pkcs8(pkcs8).expect("a test RSA key in PKCS#8 DER");
        let parts: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        let digest = ring::digest::digest(&ring::digest::SHA256, &parts.n);
        let kid: String = digest.as_ref()[..20]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let pem = spki_pem(pair.public_key().as_ref());
        RsaKey {
            kid,
            n: parts.n,
            e: parts.e,
            pem,
            pair,
        }
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": b64url_encode(&self.n),
            "e": b64url_encode(&self.e),
        })
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                message,
                &mut sig,
            )
            .expect("RS256 signing");
        sig
    }
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else if n < 0x100 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

/// PEM `PUBLIC KEY` (SubjectPublicKeyInfo) around a PKCS#1 `RSAPublicKey`.
fn spki_pem(rsa_public_key: &[u8]) -> String {
    const RSA_ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x03];
    bit_string.extend(der_len(rsa_public_key.len() + 1));
    bit_string.push(0);
    bit_string.extend_from_slice(rsa_public_key);
    let mut inner = RSA_ALGORITHM.to_vec();
    inner.extend(bit_string);
    let mut der = vec![0x30];
    der.extend(der_len(inner.len()));
    der.extend(inner);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// Who signed in, and whether they consented to offline access (a refresh token).
#[derive(Clone)]
pub struct GoogleSignIn {
    pub user: GoogleUser,
    pub offline: bool,
}

/// What is Google's own: the signing keys in use, id_token tampering, and counters.
#[derive(Default)]
pub struct GoogleOwn {
    /// The key signing now (0 or 1).
    current_key: usize,
    /// The keys in the JWKS, current first.
    published: Vec<usize>,
    next_tamper: Option<Tamper>,
    id_tokens: Vec<String>,
    discovery_fetches: usize,
    jwks_fetches: usize,
    userinfo_calls: usize,
}

type State = AsState<FakeGoogleConfig, GoogleSignIn, GoogleOwn>;
/// The signing keys are fixed at start.
type Shared = Core<State, Vec<RsaKey>>;

impl Shared {
    fn keys(&self) -> &[RsaKey] {
        &self.fixed
    }

    fn issuer_of(&self, cfg: &FakeGoogleConfig) -> String {
        cfg.issuer.clone().unwrap_or_else(|| self.base.clone())
    }
}

const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const AUTHORIZE_PATH: &str = "/o/oauth2/v2/auth";
const TOKEN_PATH: &str = "/token";
const JWKS_PATH: &str = "/oauth2/v3/certs";
const USERINFO_PATH: &str = "/v1/userinfo";
const REVOKE_PATH: &str = "/revoke";

/// A running fake Google on `127.0.0.1:<free port>`; stopped (threads joined) on drop. The
/// core's methods (`config`, `set`, `counters`, `inject_token_fault`, ...) come with it.
pub type FakeGoogle = Running<State, Vec<RsaKey>>;

impl FakeGoogle {
    /// Starts with `FakeGoogleConfig::default()`.
    pub fn start() -> FakeGoogle {
        FakeGoogle::start_with(FakeGoogleConfig::default())
    }

    /// Starts with `cfg`.
    pub fn start_with(cfg: FakeGoogleConfig) -> FakeGoogle {
        let own = GoogleOwn {
            published: vec![0],
            ..GoogleOwn::default()
        };
        let keys = KEY_PKCS8.iter().map(|k| RsaKey::load(k)).collect();
        Running::serve("fake-google", AsState::new(cfg, own), keys, handle)
    }

    /// The issuer discovery advertises and id_tokens carry (the base URL unless configured).
    pub fn issuer(&self) -> String {
        let cfg = self.config();
        self.issuer_of(&cfg)
    }

    /// The relay's provider settings (`OAUTH_RELAY_PROVIDER_<NAME>_*`) for a Google provider on
    /// this fake (its issuer is its loopback URL; Google's own is the default).
    pub fn provider_settings(&self) -> Vec<(&'static str, String)> {
        let cfg = self.config();
        vec![
            ("KIND", "google".into()),
            ("CLIENT_ID", cfg.client_id.clone()),
            ("CLIENT_SECRET", cfg.client_secret.clone()),
            ("ISSUER", self.issuer()),
        ]
    }

    /// `{base}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base)
    }

    /// `{base}/o/oauth2/v2/auth`.
    pub fn authorize_url(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.base)
    }

    /// `{base}/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base)
    }

    /// `{base}/oauth2/v3/certs`.
    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.base)
    }

    /// `{base}/v1/userinfo`.
    pub fn userinfo_url(&self) -> String {
        format!("{}{USERINFO_PATH}", self.base)
    }

    /// `{base}/revoke`.
    pub fn revoke_url(&self) -> String {
        format!("{}{REVOKE_PATH}", self.base)
    }

    /// The person at `url` (an authorize URL, as the broker built it) signs in as `user`:
    /// returns the redirect the browser would follow (`redirect_uri?state=...&code=...`), or
    /// the error page Google shows instead.
    pub fn sign_in(&self, url: &str, user: &GoogleUser) -> Result<String, SignInError> {
        self.at_keyboard(url, Who::User(user))
    }

    /// The person at `url` clicks "Cancel": `redirect_uri?error=access_denied&state=...` (or
    /// the error page Google shows when the request itself is wrong).
    pub fn decline(&self, url: &str) -> Result<String, SignInError> {
        self.at_keyboard(url, Who::Decline)
    }

    fn at_keyboard(&self, url: &str, who: Who<GoogleUser>) -> Result<String, SignInError> {
        self.visit(url, "Google", |path, request| {
            if path == AUTHORIZE_PATH {
                authorize(self, request, who)
            } else {
                handle(self, request)
            }
        })
    }

    /// The next token response's id_token (only that one) gets `tamper`.
    pub fn set_next_id_token_tamper(&self, tamper: Tamper) {
        self.lock().own.next_tamper = Some(tamper);
    }

    /// Signing switches to the other key, which is published first; the previous key stays in
    /// the JWKS (Google overlaps its keys) until `unpublish_old_keys`.
    pub fn rotate_keys(&self) {
        let own = &mut self.lock().own;
        let next = 1 - own.current_key;
        own.current_key = next;
        own.published.retain(|k| *k != next);
        own.published.insert(0, next);
    }

    /// The JWKS keeps only the current key.
    pub fn unpublish_old_keys(&self) {
        let own = &mut self.lock().own;
        own.published = vec![own.current_key];
    }

    /// The `kid` id_tokens are signed under now.
    pub fn current_kid(&self) -> String {
        let current = self.lock().own.current_key;
        self.keys()[current].kid.clone()
    }

    /// The `kid`s the JWKS publishes now, current first.
    pub fn published_kids(&self) -> Vec<String> {
        let published = self.lock().own.published.clone();
        published
            .iter()
            .map(|k| self.keys()[*k].kid.clone())
            .collect()
    }

    /// The `kid` forgeries (`Tamper::UnknownKid`) use; never published.
    pub fn unknown_kid(&self) -> String {
        self.keys()[FORGER].kid.clone()
    }

    /// The JWKS as `/oauth2/v3/certs` serves it now (not counted as a fetch).
    pub fn jwks(&self) -> Value {
        let published = self.lock().own.published.clone();
        jwks_of(self, &published)
    }

    /// The PEM (`-----BEGIN PUBLIC KEY-----`) of the current key: the HMAC secret of
    /// `Tamper::Hs256WithPublicKey`.
    pub fn public_key_pem(&self) -> String {
        let current = self.lock().own.current_key;
        self.keys()[current].pem.clone()
    }

    /// A JWT with `claims`, properly signed with the current key (header `alg`, `kid`, `typ`).
    pub fn sign_id_token(&self, claims: &Value) -> String {
        let current = self.lock().own.current_key;
        sign_rs256(&self.keys()[current], claims)
    }

    /// Every id_token issued by the token endpoint, in order (tampered ones included).
    pub fn issued_id_tokens(&self) -> Vec<String> {
        self.lock().own.id_tokens.clone()
    }

    /// Requests for the discovery document (any outcome).
    pub fn discovery_fetches(&self) -> usize {
        self.lock().own.discovery_fetches
    }

    /// Requests for the JWKS (any outcome): a caching verifier fetches again only for an
    /// unknown `kid`.
    pub fn jwks_fetches(&self) -> usize {
        self.lock().own.jwks_fetches
    }

    /// Requests to userinfo (any outcome).
    pub fn userinfo_calls(&self) -> usize {
        self.lock().own.userinfo_calls
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for tests (more in fake_provider.rs)

/// The JSON header (first segment) of a JWT.
pub fn decode_jwt_header(token: &str) -> Option<Value> {
    serde_json::from_slice(&b64url_decode(token.split('.').next()?)?).ok()
}

/// The JSON payload (middle segment) of a JWT.
pub fn decode_jwt_payload(token: &str) -> Option<Value> {
    serde_json::from_slice(&b64url_decode(token.split('.').nth(1)?)?).ok()
}

// ---------------------------------------------------------------------------------------------
// Server

const NO_CACHE: &str = "no-cache, no-store, max-age=0, must-revalidate";

fn json_reply(status: u16, v: &Value) -> FakeReply {
    super::fake_provider::json_reply(
        status,
        v,
        &[("Cache-Control", NO_CACHE), ("Pragma", "no-cache")],
    )
}

fn oauth_error(status: u16, error: &str, description: &str) -> FakeReply {
    json_reply(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// Google's sign-in error page ("Access blocked: ... Error 400: redirect_uri_mismatch").
fn error_page(status: u16, error: &str, detail: &str) -> FakeReply {
    reply(
        status,
        vec![("Content-Type", "text/html; charset=utf-8".into())],
        format!(
            "<!DOCTYPE html><html><head><title>Error {status} ({error})</title></head><body>\
             <h1>Access blocked: Authorization Error</h1>\
             <p id=\"error\">Error {status}: {}</p><p id=\"detail\">{}</p></body></html>",
            html_escape(error),
            html_escape(detail)
        )
        .into_bytes(),
    )
}

fn redirect(location: String) -> FakeReply {
    super::fake_provider::redirect_reply(
        location,
        &[
            ("Content-Type", "text/html; charset=UTF-8"),
            ("Cache-Control", NO_CACHE),
        ],
    )
}

/// Google's scope names: `email` and `profile` are granted as their userinfo URLs.
fn expand_scope(s: &str) -> String {
    match s {
        "email" => SCOPE_EMAIL.into(),
        "profile" => SCOPE_PROFILE.into(),
        other => other.into(),
    }
}

fn known_scope(s: &str) -> bool {
    matches!(s, "openid" | "email" | "profile") || s.starts_with("https://www.googleapis.com/auth/")
}

fn has(scopes: &[String], wanted: &str) -> bool {
    scopes.iter().any(|s| s == wanted)
}

fn handle(shared: &Shared, request: &FakeRequest) -> FakeReply {
    let url = request.url.clone();
    let (path, _) = url.split_once('?').unwrap_or((url.as_str(), ""));
    match path {
        DISCOVERY_PATH => discovery(shared),
        AUTHORIZE_PATH => authorize(shared, request, Who::Browser),
        TOKEN_PATH => token(shared, request),
        JWKS_PATH => jwks(shared),
        USERINFO_PATH | "/oauth2/v3/userinfo" => userinfo(shared, request),
        REVOKE_PATH => revoke(shared, request),
        _ => reply(
            404,
            vec![("Content-Type", "text/html; charset=UTF-8".into())],
            format!(
                "<!DOCTYPE html><p><b>404.</b> That’s an error.</p>\
                 <p>The requested URL <code>{}</code> was not found on this server.</p>",
                html_escape(path)
            )
            .into_bytes(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery and keys

fn discovery(shared: &Shared) -> FakeReply {
    let cfg = {
        let mut st = shared.lock();
        st.own.discovery_fetches += 1;
        st.cfg.clone()
    };
    if let Some(status) = cfg.discovery_error {
        return error_page(
            status,
            "server_error",
            "The server encountered a temporary error.",
        );
    }
    let b = &shared.base;
    let mut r = json_reply(
        200,
        &json!({
            "issuer": shared.issuer_of(&cfg),
            "authorization_endpoint": format!("{b}{AUTHORIZE_PATH}"),
            "token_endpoint": format!("{b}{TOKEN_PATH}"),
            "userinfo_endpoint": format!("{b}{USERINFO_PATH}"),
            "revocation_endpoint": format!("{b}{REVOKE_PATH}"),
            "jwks_uri": format!("{b}{JWKS_PATH}"),
            "response_types_supported": [
                "code", "token", "id_token", "code token", "code id_token",
                "token id_token", "code token id_token", "none"
            ],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": [
                "aud", "email", "email_verified", "exp", "family_name", "given_name",
                "iat", "iss", "name", "picture", "sub"
            ],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": [
                "authorization_code", "refresh_token",
                "urn:ietf:params:oauth:grant-type:device_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer"
            ],
        }),
    );
    r.headers[1].1 = "public, max-age=3600".into();
    r.headers.remove(2);
    r
}

fn jwks_of(shared: &Shared, published: &[usize]) -> Value {
    let keys: Vec<Value> = published.iter().map(|k| shared.keys()[*k].jwk()).collect();
    json!({ "keys": keys })
}

fn jwks(shared: &Shared) -> FakeReply {
    let (delay, error, published) = {
        let mut st = shared.lock();
        st.own.jwks_fetches += 1;
        (
            st.cfg.jwks_delay,
            st.cfg.jwks_error,
            st.own.published.clone(),
        )
    };
    shared.nap(delay);
    if let Some(status) = error {
        return error_page(
            status,
            "server_error",
            "The server encountered a temporary error.",
        );
    }
    let mut r = json_reply(200, &jwks_of(shared, &published));
    r.headers[1].1 = "public, max-age=23190, must-revalidate, no-transform".into();
    r.headers.remove(2);
    r
}

fn sign_rs256(key: &RsaKey, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": key.kid, "typ": "JWT"});
    sign_with(key, &header, claims)
}

fn sign_with(key: &RsaKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(claims.to_string().as_bytes())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64url_encode(&sig))
}

/// The id_token of one token response, tampered as asked.
fn make_id_token(
    shared: &Shared,
    st: &mut State,
    client_id: &str,
    user: &GoogleUser,
    scopes: &[String],
    nonce: Option<&str>,
    access_token: &str,
) -> String {
    let tamper = st
        .own
        .next_tamper
        .take()
        .or_else(|| st.cfg.id_token_tamper.clone());
    if tamper == Some(Tamper::ReplayPrevious) {
        if let Some(previous) = st.own.id_tokens.last().cloned() {
            st.own.id_tokens.push(previous.clone());
            return previous;
        }
    }
    let now = unix_now();
    let digest = ring::digest::digest(&ring::digest::SHA256, access_token.as_bytes());
    let mut claims = json!({
        "iss": shared.issuer_of(&st.cfg),
        "azp": client_id,
        "aud": client_id,
        "sub": user.sub,
        "at_hash": b64url_encode(&digest.as_ref()[..16]),
        "iat": now,
        "exp": now + st.cfg.id_token_lifetime_secs,
    });
    if let Some(hd) = &user.hd {
        claims["hd"] = json!(hd);
    }
    if has(scopes, SCOPE_EMAIL) {
        claims["email"] = json!(user.email);
        claims["email_verified"] = json!(user.email_verified);
    }
    if has(scopes, SCOPE_PROFILE) {
        claims["name"] = json!(user.name);
        claims["picture"] = json!(user.picture);
        claims["given_name"] = json!(user.given_name);
        claims["family_name"] = json!(user.family_name);
    }
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    let current = &shared.keys()[st.own.current_key];
    let forger = &shared.keys()[FORGER];
    let header = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let token = match tamper {
        None | Some(Tamper::ReplayPrevious) => sign_rs256(current, &claims),
        Some(Tamper::ForgedSignature) => sign_with(forger, &header("RS256", &current.kid), &claims),
        Some(Tamper::UnknownKid) => sign_rs256(forger, &claims),
        Some(Tamper::WrongAud) => {
            let other = "999999999999-an0therc1ient.apps.googleusercontent.com";
            claims["aud"] = json!(other);
            claims["azp"] = json!(other);
            sign_rs256(current, &claims)
        }
        Some(Tamper::WrongIss) => {
            claims["iss"] = json!("https://accounts.google.example.invalid");
            sign_rs256(current, &claims)
        }
        Some(Tamper::WrongNonce) => {
            claims["nonce"] = json!(random_b64(16));
            sign_rs256(current, &claims)
        }
        Some(Tamper::Expired) => {
            claims["iat"] = json!(now - 7200);
            claims["exp"] = json!(now - 3600);
            sign_rs256(current, &claims)
        }
        Some(Tamper::IssuedInFuture) => {
            claims["iat"] = json!(now + 3600);
            claims["exp"] = json!(now + 3600 + st.cfg.id_token_lifetime_secs);
            sign_rs256(current, &claims)
        }
        Some(Tamper::AlgNone) => format!(
            "{}.{}.",
            b64url_encode(header("none", &current.kid).to_string().as_bytes()),
            b64url_encode(claims.to_string().as_bytes())
        ),
        Some(Tamper::Hs256WithPublicKey) => {
            let input = format!(
                "{}.{}",
                b64url_encode(header("HS256", &current.kid).to_string().as_bytes()),
                b64url_encode(claims.to_string().as_bytes())
            );
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, current.pem.as_bytes());
            let tag = ring::hmac::sign(&key, input.as_bytes());
            format!("{input}.{}", b64url_encode(tag.as_ref()))
        }
        Some(Tamper::Claims(extra)) => {
            if let (Some(map), Value::Object(extra)) = (claims.as_object_mut(), extra) {
                for (k, v) in extra {
                    if v.is_null() {
                        map.remove(&k);
                    } else {
                        map.insert(k, v);
                    }
                }
            }
            sign_rs256(current, &claims)
        }
    };
    st.own.id_tokens.push(token.clone());
    token
}

// ---------------------------------------------------------------------------------------------
// GET /o/oauth2/v2/auth

fn authorize(shared: &Shared, request: &FakeRequest, who: Who<GoogleUser>) -> FakeReply {
    let query = request.url.split_once('?').map_or("", |(_, q)| q);
    let params: Params = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut st = shared.lock();
    st.auth.authorize_requests.push(params.clone());
    if request.method != "GET" && request.method != "POST" {
        return error_page(405, "invalid_request", "Method not allowed.");
    }
    let cfg = st.cfg.clone();
    let p = |k: &str| param(&params, k).map(str::to_string);
    let missing = |name: &str| {
        error_page(
            400,
            "invalid_request",
            &format!("Missing required parameter: {name}"),
        )
    };
    let rules = AuthorizeRules {
        client_id: &cfg.client_id,
        redirect_uris: &cfg.redirect_uris,
        default_redirect_uri: false,
        response_type: true,
        require_scope: true,
        require_state: cfg.require_state,
        pkce: PkceRules {
            required: cfg.require_pkce,
            methods: &["S256", "plain"],
            default_method: Some("plain"),
        },
    };
    // Google shows every error on its own page; only a refusal goes back to the client.
    let request = match check_authorize(&params, &rules) {
        Ok(request) => request,
        Err(refusal) => {
            return match refusal.error {
                AuthorizeError::MissingClientId => missing("client_id"),
                AuthorizeError::UnknownClient(_) => {
                    error_page(401, "invalid_client", "The OAuth client was not found.")
                }
                AuthorizeError::MissingRedirectUri => missing("redirect_uri"),
                AuthorizeError::UnregisteredRedirectUri(uri) => error_page(
                    400,
                    "redirect_uri_mismatch",
                    &format!(
                        "You can't sign in to this app because it doesn't comply with Google's \
                         OAuth 2.0 policy. If you're the app developer, register the redirect \
                         URI in the Google Cloud Console. Request details: redirect_uri={uri}"
                    ),
                ),
                AuthorizeError::MissingResponseType => missing("response_type"),
                AuthorizeError::UnsupportedResponseType(other) => error_page(
                    400,
                    "unsupported_response_type",
                    &format!("Invalid response_type: {other} (this fake does the code flow)"),
                ),
                AuthorizeError::MissingScope => missing("scope"),
                AuthorizeError::MissingState => error_page(
                    400,
                    "invalid_request",
                    "fake Google: this fake requires a non-empty state parameter.",
                ),
                AuthorizeError::MissingChallenge if p("code_challenge_method").is_some() => {
                    missing("code_challenge")
                }
                AuthorizeError::MissingChallenge => error_page(
                    400,
                    "invalid_request",
                    "fake Google: this fake requires PKCE (code_challenge).",
                ),
                AuthorizeError::UnsupportedChallengeMethod(method) => error_page(
                    400,
                    "invalid_request",
                    &format!("Invalid code_challenge_method: {method}"),
                ),
                AuthorizeError::InvalidChallenge => {
                    error_page(400, "invalid_request", "Invalid code_challenge.")
                }
            };
        }
    };
    let requested: Vec<String> = request
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = requested.iter().find(|s| !known_scope(s)) {
        return error_page(
            400,
            "invalid_scope",
            &format!("Some requested scopes were invalid. {{invalid=[{bad}]}}"),
        );
    }
    if cfg.require_openid && !has(&requested, "openid") {
        return error_page(
            400,
            "invalid_request",
            "fake Google: this fake requires the openid scope (Google would issue no id_token).",
        );
    }
    let access_type = p("access_type").unwrap_or_else(|| "online".into());
    if access_type != "online" && access_type != "offline" {
        return error_page(
            400,
            "invalid_request",
            &format!("Invalid access_type: {access_type}"),
        );
    }
    let prompts: Vec<String> = p("prompt")
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = prompts
        .iter()
        .find(|s| !matches!(s.as_str(), "none" | "consent" | "select_account"))
    {
        return error_page(400, "invalid_request", &format!("Invalid prompt: {bad}"));
    }
    if has(&prompts, "none") && prompts.len() > 1 {
        return error_page(
            400,
            "invalid_request",
            "prompt=none cannot be combined with other values.",
        );
    }
    let Some(user) = who.consents(cfg.cancel, &cfg.user) else {
        let mut out = vec![("error", "access_denied")];
        if let Some(s) = &request.state {
            out.push(("state", s.as_str()));
        }
        return redirect(with_query(&request.redirect_uri, &out));
    };
    let mut scopes: Vec<String> = Vec::new();
    for s in requested.iter().map(|s| expand_scope(s)) {
        if !has(&scopes, &s) {
            scopes.push(s);
        }
    }
    // A refresh token only with access_type=offline and prompt=consent.
    let consent = has(&prompts, "consent");
    let signed = GoogleSignIn {
        user: user.clone(),
        offline: access_type == "offline" && consent,
    };
    let code = format!("4/0A{}", random_b64(54));
    let code = st.auth.issue_code(code, &request, scopes.clone(), signed);
    drop(st);
    let scope = scopes.join(" ");
    let mut out: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &request.state {
        out.push(("state", s.as_str()));
    }
    out.push(("code", code.as_str()));
    out.push(("scope", scope.as_str()));
    out.push(("authuser", "0"));
    if let Some(hd) = &user.hd {
        out.push(("hd", hd.as_str()));
    }
    out.push(("prompt", if consent { "consent" } else { "none" }));
    redirect(with_query(&request.redirect_uri, &out))
}

// ---------------------------------------------------------------------------------------------
// POST /token

fn token(shared: &Shared, request: &FakeRequest) -> FakeReply {
    if request.method != "POST" {
        return error_page(405, "invalid_request", "Method not allowed.");
    }
    let basic = request.header("authorization").and_then(parse_basic);
    shared.serve_token(
        request_params(request),
        |c| c.token_delay,
        |st, params| token_grant(shared, st, params, basic.as_ref()),
    )
}

/// Google's side of a token request: its words and its token formats.
struct GoogleTokens;

impl TokenQuirks<GoogleSignIn> for GoogleTokens {
    fn refuse(&self, e: TokenError) -> FakeReply {
        let (status, error, description) = match e {
            TokenError::Missing("grant_type") => {
                (400, "unsupported_grant_type", "Invalid grant_type: ".into())
            }
            TokenError::Missing("redirect_uri") => (
                400,
                "invalid_request",
                "Missing parameter: redirect_uri".into(),
            ),
            TokenError::Missing(name) => (
                400,
                "invalid_request",
                format!("Missing required parameter: {name}"),
            ),
            TokenError::UnsupportedGrantType(other) => (
                400,
                "unsupported_grant_type",
                format!("Invalid grant_type: {other}"),
            ),
            TokenError::Client(ClientError::MissingId) => (
                400,
                "invalid_request",
                "Could not determine client ID from request.".into(),
            ),
            TokenError::Client(ClientError::UnknownId(_)) => (
                401,
                "invalid_client",
                "The OAuth client was not found.".into(),
            ),
            TokenError::Client(ClientError::MissingSecret) => {
                (400, "invalid_request", "client_secret is missing.".into())
            }
            TokenError::Client(_) => (401, "invalid_client", "Unauthorized".into()),
            TokenError::Code(CodeError::Unknown) => {
                (400, "invalid_grant", "Malformed auth code.".into())
            }
            TokenError::Code(CodeError::RedirectMismatch { .. }) => {
                (400, "redirect_uri_mismatch", "Bad Request".into())
            }
            TokenError::Code(CodeError::MissingVerifier) => {
                (400, "invalid_grant", "Missing code verifier.".into())
            }
            TokenError::Code(CodeError::WrongVerifier) => {
                (400, "invalid_grant", "Invalid code verifier.".into())
            }
            TokenError::Code(_) => (400, "invalid_grant", "Bad Request".into()),
            TokenError::Refresh(RefreshError::OtherClient) => {
                (400, "unauthorized_client", "Unauthorized".into())
            }
            TokenError::Refresh(_) => (
                400,
                "invalid_grant",
                "Token has been expired or revoked.".into(),
            ),
        };
        oauth_error(status, error, &description)
    }

    fn new_refresh_token(&self) -> String {
        format!("1//0{}", random_b64(75))
    }

    /// A refresh token only with `access_type=offline` and `prompt=consent`.
    fn refresh_on_code(&self, grant: &Grant<GoogleSignIn>) -> bool {
        grant.user.offline
    }
}

fn token_grant(
    shared: &Shared,
    st: &mut State,
    params: &Params,
    basic: Option<&(String, String)>,
) -> FakeReply {
    let cfg = st.cfg.clone();
    if let Some((status, error, description)) = &cfg.token_error {
        return oauth_error(*status, error, description);
    }
    let rules = TokenRules {
        client: ClientRule {
            client_id: &cfg.client_id,
            secret: Some(&cfg.client_secret),
        },
        default_grant_type: None,
        client_first: false,
        redirect_uri_required: true,
        code_lifetime: cfg.code_lifetime,
        refresh_policy: cfg.refresh_policy,
        refresh_lifetime: cfg.refresh_token_lifetime,
    };
    let granted = match st.auth.token(params, basic, &rules, &GoogleTokens) {
        Ok(granted) => granted,
        Err(reply) => return reply,
    };
    let (grant, client_id, nonce) = (granted.grant, granted.client_id, granted.nonce);
    let GoogleSignIn { user, .. } = st.auth.grant(grant).user.clone();
    let scopes = st.auth.grant(grant).scopes.clone();
    let access_token = format!("ya29.a0{}", random_b64(120));
    let lifetime = Duration::from_secs(cfg.access_token_lifetime_secs);
    st.auth
        .issue_access(access_token.clone(), grant, scopes.clone(), Some(lifetime));
    let mut body = json!({
        "access_token": access_token,
        "expires_in": cfg.access_token_lifetime_secs,
        "scope": scopes.join(" "),
        "token_type": "Bearer",
    });
    if let Some(refresh) = granted.refresh_token {
        body["refresh_token"] = json!(refresh);
    }
    if has(&scopes, "openid") {
        let id_token = make_id_token(
            shared,
            st,
            &client_id,
            &user,
            &scopes,
            nonce.as_deref(),
            &access_token,
        );
        body["id_token"] = json!(id_token);
    }
    json_reply(200, &body)
}

// ---------------------------------------------------------------------------------------------
// Userinfo and revocation

fn userinfo(shared: &Shared, request: &FakeRequest) -> FakeReply {
    let delay = {
        let mut st = shared.lock();
        st.own.userinfo_calls += 1;
        st.cfg.userinfo_delay
    };
    shared.nap(delay);
    let unauthorized = || {
        let mut r = oauth_error(401, "invalid_request", "Invalid Credentials");
        r.headers.push((
            "WWW-Authenticate",
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"".into(),
        ));
        r
    };
    let token = request.header("authorization").and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    let st = shared.lock();
    let Some((access, grant)) = token.and_then(|t| st.auth.live_access(&t)) else {
        return unauthorized();
    };
    let u = &grant.user.user;
    let mut body = json!({ "sub": u.sub });
    if has(&access.scopes, SCOPE_PROFILE) {
        body["name"] = json!(u.name);
        body["given_name"] = json!(u.given_name);
        body["family_name"] = json!(u.family_name);
        body["picture"] = json!(u.picture);
    }
    if has(&access.scopes, SCOPE_EMAIL) {
        body["email"] = json!(u.email);
        body["email_verified"] = json!(u.email_verified);
    }
    if let Some(hd) = &u.hd {
        body["hd"] = json!(hd);
    }
    json_reply(200, &body)
}

/// RFC 7009 as Google does it: a refresh or an access token, in the query or the form; either
/// ends the whole grant.
fn revoke(shared: &Shared, request: &FakeRequest) -> FakeReply {
    if request.method != "POST" {
        return error_page(405, "invalid_request", "Method not allowed.");
    }
    let params = request_params(request);
    let Some(token) = param(&params, "token") else {
        return oauth_error(400, "invalid_request", "Missing required parameter: token");
    };
    if !shared.lock().auth.revoke_token(token) {
        return oauth_error(400, "invalid_token", "Token expired or revoked");
    }
    json_reply(200, &json!({}))
}
