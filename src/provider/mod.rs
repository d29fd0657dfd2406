//! Identity providers behind one trait, and the registry of their kinds. The broker only knows
//! the [`Provider`] trait; each kind is one file that owns everything about it: its kind name,
//! its settings with their rules and defaults, its quirks (endpoints, client authentication,
//! how identity is read and which claims vouch for it), its own failure reasons and their
//! words, how it rotates refresh tokens: `oidc.rs` (any OpenID Connect provider), `google.rs`,
//! `github.rs`, `microsoft.rs`. What they share: the OAuth client as data, with the one
//! authorize URL, code redemption, refresh and revocation (`oauth.rs`); id_token verification
//! (`jwks.rs`); the settings every kind has (`settings.rs`). Every call upstream goes through
//! `outbound::Http`, so a test hands in a closure.
//!
//! A new kind is one new file declaring its `pub static KIND: Kind`, its `pub mod` line below
//! and its line in [`KINDS`] (Dex's registry: kind name to settings and constructor). If it has
//! failure reasons of its own, openapi.json's `Reason` lists their codes too (tests/openapi.rs
//! checks it against [`every_reason`]).

pub mod github;
pub mod google;
pub mod jwks;
pub mod microsoft;
pub mod oauth;
pub mod oidc;
pub mod settings;

use crate::connections::refresher::Refresher;
use crate::error::{Error, OwnReason, Reason, SignInFailure};
use crate::outbound::{Http, Request};
use crate::secret::Secret;
use serde_json::Value;
use settings::ProviderSettings;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use crate::grant::Grant;
pub use crate::identity::Identity;
pub use oauth::RevokeError;

/// Every kind, in the order messages list them.
pub static KINDS: &[&Kind] = &[
    &oidc::KIND,
    &google::KIND,
    &github::KIND,
    &microsoft::KIND,
    // A new kind: its line here.
];

/// A kind's constructor: checked settings, the way upstream, the time discovery may take.
pub type Build =
    fn(&ProviderSettings, Arc<dyn Http>, Duration) -> Result<Arc<dyn Provider>, String>;

/// What the registry knows of a kind, all declared in its own file.
pub struct Kind {
    /// The value of `OAUTH_RELAY_PROVIDER_<NAME>_KIND`.
    pub name: &'static str,
    /// The settings its providers read besides the common ones (`settings::COMMON`), in the
    /// order they are read; any other is refused at start-up.
    pub settings: &'static [settings::Setting],
    /// Applies the kind's rules to settings read for form, and fills in its defaults. No
    /// network; an error names the variable to fix.
    pub check: fn(&mut ProviderSettings) -> Result<(), String>,
    /// Builds a provider from checked settings; may ask the provider for its metadata (OpenID
    /// Connect discovery) through `http` within the budget. An error names the variable to fix.
    pub build: Build,
    /// The failure reasons only this kind gives (`Reason::Own`).
    pub reasons: &'static [&'static OwnReason],
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The kind of this name.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// The kinds' names for messages: `oidc, google, github or microsoft`.
pub fn kind_names() -> String {
    let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Every setting (variable suffix) of any kind: the common ones, then each kind's own.
pub fn every_setting() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = settings::COMMON.to_vec();
    for setting in KINDS.iter().flat_map(|k| k.settings) {
        if !all.contains(&setting.name) {
            all.push(setting.name);
        }
    }
    all
}

/// Every reason a sign-in can fail with: the shared ones, then each kind's own. openapi.json's
/// `Reason` lists exactly these codes.
pub fn every_reason() -> Vec<Reason> {
    let own = KINDS.iter().flat_map(|k| k.reasons).map(|r| Reason::Own(r));
    Reason::SHARED.into_iter().chain(own).collect()
}

/// Checks a provider's settings by its kind's rules and fills in its defaults. No network.
pub fn check_settings(s: &mut ProviderSettings) -> Result<(), String> {
    (s.kind.check)(s)
}

/// Builds a provider from checked settings, reaching it through `http`; may ask the provider
/// for its metadata within `budget`. An error names the variable to fix.
pub fn build(
    s: &ProviderSettings,
    http: Arc<dyn Http>,
    budget: Duration,
) -> Result<Arc<dyn Provider>, String> {
    (s.kind.build)(s, http, budget)
}

/// Each provider by name as the connections core refreshes through it (`Connections::new`):
/// a provider is its own `Refresher`.
pub fn refreshers(providers: &[Arc<dyn Provider>]) -> HashMap<String, Arc<dyn Refresher>> {
    providers
        .iter()
        .map(|p| (p.name().to_string(), p.clone() as Arc<dyn Refresher>))
        .collect()
}

/// What the broker asks of a provider for one sign-in.
pub struct AuthorizeRequest<'a> {
    pub state: &'a str,
    pub code_challenge: &'a str,
    /// OpenID Connect's replay protection: echoed in the id_token.
    pub nonce: &'a str,
    /// The expected e-mail, for providers that pre-fill their sign-in form with it.
    pub login_hint: Option<&'a str>,
    pub scopes: &'a [String],
    pub force_consent: bool,
}

/// A provider, as the broker signs people in with it and (through its [`Refresher`] side, where
/// each kind states how it rotates refresh tokens) as the connections core keeps its grants.
/// The OAuth exchanges are the shared client's ([`Provider::client`]): a kind writes code only
/// where it really differs.
pub trait Provider: Refresher + Send + Sync {
    /// The name sessions and routes use (`m365`, `github`, `corp`).
    fn name(&self) -> &str;
    /// What a person knows the sign-in by, for pages ("GitHub", "Microsoft 365").
    fn display_name(&self) -> &str;
    /// Whether only read access can be granted (the success page says so).
    fn read_only(&self) -> bool {
        false
    }
    /// The OAuth client: endpoints, client id and authentication, redirect URI, extra
    /// parameters, revocation.
    fn client(&self) -> &oauth::Client;
    /// Where the provider sends the browser back to, exactly as registered with it.
    fn redirect_uri(&self) -> &str {
        &self.client().redirect_uri
    }
    /// The scopes of a new session: the configured ones, or `requested` when the provider's
    /// rules allow them (400 otherwise), plus what sign-in itself needs.
    fn scopes(&self, requested: Option<&[String]>) -> Result<Vec<String>, Error>;
    fn authorize_url(&self, request: &AuthorizeRequest) -> String {
        self.client().authorize_url(request, &[])
    }
    /// RFC 9207: the `iss` parameter of the authorization response, checked before anything in
    /// the response is used.
    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInFailure>;
    /// Redeems the authorization code with the PKCE verifier within `budget`.
    fn exchange(
        &self,
        code: &Secret,
        verifier: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> Result<Grant, SignInFailure> {
        self.client()
            .exchange(code, verifier, scopes, budget, &|e| self.error_hint(e))
    }
    /// Reads who signed in (id_token claims, profile calls) within `budget`, and applies the
    /// provider's own rules (tenant, hosted domain). `nonce` is the session's.
    fn identity(
        &self,
        grant: &Grant,
        nonce: &str,
        budget: Duration,
    ) -> Result<Identity, SignInFailure>;
    /// Ends a grant at the provider, as the provider allows (`oauth::Revocation`), with the
    /// refresh token or the access token it needs.
    fn revoke(
        &self,
        access_token: Option<&Secret>,
        refresh_token: Option<&Secret>,
        budget: Duration,
    ) -> Result<(), RevokeError> {
        self.client().revoke(access_token, refresh_token, budget)
    }
    /// Whether a sign-in without a refresh token fails (`no_refresh_token`).
    fn refresh_token_required(&self, _scopes: &[String]) -> bool {
        true
    }
    /// What the operator should do when a required refresh token did not come.
    fn no_refresh_token_hint(&self) -> Option<String> {
        None
    }
    /// What the operator should fix, for an error description the provider sent (to the
    /// callback or the token endpoint). For the audit log only.
    fn error_hint(&self, _description: &str) -> Option<String> {
        None
    }
    /// What the `listening` log line says about the provider (never a secret).
    fn describe(&self) -> Value;
    /// What the service itself must reach at the provider (its discovery document and keys, its
    /// API), for the deployment check (`GET /deployment`). Defaults to nothing.
    fn upstreams(&self) -> Vec<Upstream> {
        Vec::new()
    }
}

/// Something at the provider the service must reach for sign-ins to work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// What it is: `discovery`, `keys`, `graph`, `api`, `token endpoint`.
    pub name: &'static str,
    pub url: String,
    pub wanted: Wanted,
    /// The setting that decides the URL (named in the check's fix).
    pub setting: String,
}

/// What a good answer from an [`Upstream`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// An OpenID configuration: 200, a JSON object naming this issuer (any issuer when `None`).
    Discovery(Option<String>),
    /// A JWK set with at least one key verification would use.
    Keys,
    /// Any HTTP answer: the host is reachable (an API that wants a token answers 401).
    AnyAnswer,
}

/// Asks `upstream` now, within `budget`: what it answered (`Ok`), or why that is not what the
/// provider's sign-ins need. Sends no credential.
pub fn probe(upstream: &Upstream, budget: Duration) -> Result<String, String> {
    probe_through(&crate::outbound::Ureq, upstream, budget)
}

/// [`probe`] through `http` (a closure in tests).
pub fn probe_through(
    http: &dyn Http,
    upstream: &Upstream,
    budget: Duration,
) -> Result<String, String> {
    let limit = match upstream.wanted {
        Wanted::Keys => jwks::MAX_JWKS_BYTES + 1,
        _ => crate::outbound::DEFAULT_LIMIT,
    };
    let request = Request::get(&upstream.url, budget)
        .header("Accept", "application/json")
        // GitHub's API refuses requests without one.
        .header(
            "User-Agent",
            concat!("oauth-relay/", env!("CARGO_PKG_VERSION")),
        )
        .limit(limit);
    let response = http.call(request).map_err(|e| e.to_string());
    match &upstream.wanted {
        Wanted::AnyAnswer => response.map(|r| format!("HTTP {}", r.status)),
        Wanted::Discovery(issuer) => {
            let response = response?;
            if response.status != 200 {
                return Err(format!("HTTP {}", response.status));
            }
            let document = response.json();
            let found = document["issuer"]
                .as_str()
                .ok_or("HTTP 200 without an issuer: not an OpenID configuration document")?;
            match issuer {
                Some(expected) if expected != found => Err(format!(
                    "the document names the issuer {found:?}, not {expected:?}"
                )),
                _ => Ok(format!("HTTP 200, issuer {found}")),
            }
        }
        Wanted::Keys => {
            let response = response?;
            if response.status != 200 {
                return Err(format!("HTTP {}", response.status));
            }
            let keys = jwks::usable_keys(&response.body)?;
            Ok(format!(
                "HTTP 200, {keys} usable signing key{}",
                if keys == 1 { "" } else { "s" }
            ))
        }
    }
}

/// The usual rule for per-session scopes: each must be one of the provider's allowed scopes.
pub fn allowed_subset(requested: &[String], allowed: &[String]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for scope in requested {
        if !allowed.contains(scope) {
            return Err(Error::ScopeNotAllowed);
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::BadRequest("scopes must not be empty"));
    }
    Ok(out)
}

/// `scopes` with `needed` added in front where missing.
pub fn with_scopes(mut scopes: Vec<String>, needed: &[&str]) -> Vec<String> {
    for scope in needed.iter().rev() {
        if !scopes.iter().any(|s| s == scope) {
            scopes.insert(0, scope.to_string());
        }
    }
    scopes
}

/// An id_token that does not verify: the person is told `id_token_invalid`; the operator's log
/// gets the JWKS module's own reason code and words.
impl From<jwks::IdTokenError> for SignInFailure {
    fn from(e: jwks::IdTokenError) -> SignInFailure {
        let hint = match e {
            jwks::IdTokenError::KeysUnavailable(_) => {
                Some("the provider's jwks_uri did not answer with a usable key set; check egress")
            }
            jwks::IdTokenError::WrongIssuer | jwks::IdTokenError::WrongAudience => {
                Some("check the configured issuer or tenant and the client id")
            }
            _ => None,
        };
        SignInFailure::new(Reason::IdTokenInvalid, format!("{}: {e}", e.reason())).with_hint(hint)
    }
}

/// Sends `request` and reads the answer as JSON: the status and the body (`Null` when not
/// JSON), or the transport's words for what went wrong.
pub fn call_json(http: &dyn Http, request: Request) -> Result<(u16, Value), String> {
    let response = http.call(request).map_err(|e| e.to_string())?;
    Ok((response.status, response.json()))
}

/// What provider tests hand in instead of a network: a closure for an upstream, the requests it
/// was sent, and settings as the environment would give them.
#[cfg(test)]
pub(crate) mod testing {
    use super::settings::ProviderSettings;
    use super::Kind;
    use crate::outbound::{Http, Request, Response, TransportError, TransportFailure};
    use std::sync::{Arc, Mutex};

    /// An upstream answering by `answer`, keeping what it was sent (bodies included).
    pub(crate) struct Upstream {
        pub(crate) seen: Arc<Mutex<Vec<Request>>>,
        pub(crate) http: Arc<dyn Http>,
    }

    impl Upstream {
        pub(crate) fn new(
            answer: impl Fn(&Request) -> Result<Response, TransportError> + Send + Sync + 'static,
        ) -> Upstream {
            let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
            let log = seen.clone();
            let http: Arc<dyn Http> = Arc::new(move |r: Request| {
                let answer = answer(&r);
                log.lock().unwrap().push(r);
                answer
            });
            Upstream { seen, http }
        }

        /// An upstream that answers every request with `status` and `body`.
        pub(crate) fn answering(status: u16, body: &str) -> Upstream {
            let body = body.to_string();
            Upstream::new(move |_| Ok(Response::new(status, body.clone())))
        }

        /// An upstream that is never reached.
        pub(crate) fn unreachable() -> Upstream {
            Upstream::new(|_| {
                Err(TransportError::new(
                    TransportFailure::Connect,
                    "connection refused",
                ))
            })
        }

        /// The requests sent so far.
        pub(crate) fn requests(&self) -> std::sync::MutexGuard<'_, Vec<Request>> {
            self.seen.lock().unwrap()
        }
    }

    /// A provider `name` of `kind` with only a client id, as from `OAUTH_RELAY_PROVIDER_*`.
    pub(crate) fn settings(name: &str, kind: &'static Kind) -> ProviderSettings {
        ProviderSettings::new(
            name,
            kind,
            format!("https://relay.example/login/{name}/callback"),
            "client".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn session_scopes_must_be_allowed() {
        let allowed = list(&["read:user", "user:email", "repo:status"]);
        assert_eq!(
            allowed_subset(&list(&["user:email", "user:email"]), &allowed).unwrap(),
            ["user:email"]
        );
        assert_eq!(
            allowed_subset(&list(&["repo"]), &allowed),
            Err(Error::ScopeNotAllowed)
        );
        assert!(allowed_subset(&[], &allowed).is_err());
        assert_eq!(
            with_scopes(list(&["email"]), &["openid", "offline_access"]),
            ["openid", "offline_access", "email"]
        );
    }

    #[test]
    fn probes_tell_what_a_sign_in_needs_from_what_it_cannot_use() {
        use crate::outbound::tests::{json_reply, serve_once};
        let at = |url: String, wanted: Wanted| Upstream {
            name: "x",
            url,
            wanted,
            setting: "V".into(),
        };
        let issuer = Some("https://idp.example".to_string());
        let (url, seen) = serve_once(&json_reply("200 OK", r#"{"issuer":"https://idp.example"}"#));
        assert_eq!(
            probe(
                &at(url, Wanted::Discovery(issuer.clone())),
                Duration::from_secs(5)
            ),
            Ok("HTTP 200, issuer https://idp.example".into())
        );
        let request = seen.recv().unwrap().to_ascii_lowercase();
        assert!(
            !request.contains("authorization"),
            "no credential: {request}"
        );
        let (url, _) = serve_once(&json_reply(
            "200 OK",
            r#"{"issuer":"https://other.example"}"#,
        ));
        let e = probe(&at(url, Wanted::Discovery(issuer)), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("not \"https://idp.example\""), "{e}");
        let (url, _) = serve_once(&json_reply(
            "200 OK",
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
        ));
        let e = probe(&at(url, Wanted::Keys), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("none of the JWKS's 1 keys"), "{e}");
        let (url, _) = serve_once(&json_reply("404 Not Found", "{}"));
        assert_eq!(
            probe(&at(url.clone(), Wanted::AnyAnswer), Duration::from_secs(5)),
            Ok("HTTP 404".into())
        );
        // Nothing listens there any more.
        assert!(probe(&at(url, Wanted::AnyAnswer), Duration::from_secs(5)).is_err());
    }

    #[test]
    fn id_token_errors_are_id_token_invalid_with_the_jwks_reason() {
        let f = SignInFailure::from(jwks::IdTokenError::NonceMismatch);
        assert_eq!(f.reason, Reason::IdTokenInvalid);
        assert!(f.detail.starts_with("id_token_nonce: "), "{}", f.detail);
    }

    #[test]
    fn reason_codes_are_stable_and_unique() {
        let every = every_reason();
        let codes: Vec<&str> = every.iter().map(|r| r.code()).collect();
        for (i, r) in every.iter().enumerate() {
            assert!((200..600).contains(&r.status()));
            assert_eq!(
                codes.iter().position(|c| *c == r.code()),
                Some(i),
                "{r} twice"
            );
        }
        for kept in [
            "access_denied",
            "email_mismatch",
            "tenant_mismatch",
            "state_unknown",
            "state_expired",
            "state_reused",
            "link_unknown",
            "link_expired",
            "link_used",
            "already_connected",
            "unavailable",
            "provider_error",
            "exchange_failed",
            "no_refresh_token",
            "graph_failed",
        ] {
            assert!(codes.contains(&kept), "{kept} was dropped");
        }
        assert!(!codes.contains(&"nonsense"));
        // The kinds' own reasons keep the statuses they had as shared ones.
        let status = |code: &str| every.iter().find(|r| r.code() == code).unwrap().status();
        assert_eq!(status("graph_failed"), 502);
        assert_eq!(status("tenant_mismatch"), 403);
        assert_eq!(status("hosted_domain_mismatch"), 403);
    }

    #[test]
    fn the_registry_names_each_kind_once_and_every_setting() {
        // The words of messages that list the kinds, as before the registry (a new kind joins
        // at the end).
        let names = kind_names();
        assert!(
            names.starts_with("oidc, google, github") && names.contains(" microsoft"),
            "{names}"
        );
        assert_eq!(names.matches(" or ").count(), 1, "{names}");
        for k in KINDS {
            assert_eq!(kind(k.name).map(|f| f.name), Some(k.name));
        }
        assert!(kind("saml").is_none());
        let all = every_setting();
        assert_eq!(&all[..settings::COMMON.len()], settings::COMMON);
        for setting in [
            "ISSUER",
            "AUTHORIZE_URL",
            "TOKEN_URL",
            "API_URL",
            "LOGIN_URL",
            "TENANT",
            "HOSTED_DOMAIN",
        ] {
            assert!(all.contains(&setting), "{setting}");
        }
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn the_connections_core_refreshes_through_a_provider() {
        use crate::connections::memory::MemoryConnections;
        use crate::connections::{Connections, Policy};
        use crate::outbound::Response;
        use std::time::{Instant, SystemTime};
        let upstream = testing::Upstream::new(|r| {
            assert_eq!(r.form_value("grant_type").as_deref(), Some("refresh_token"));
            Ok(Response::new(
                200,
                r#"{"access_token":"at-2","refresh_token":"rt-2","expires_in":3600}"#,
            ))
        });
        let mut s = microsoft::WkArgs {
            m365_client_id: Some("client".into()),
            ..microsoft::WkArgs::default()
        }
        .settings("https://relay.example")
        .unwrap()
        .unwrap();
        check_settings(&mut s).unwrap();
        let provider = build(&s, upstream.http.clone(), Duration::from_secs(1)).unwrap();
        let connections = Connections::new(
            Arc::new(MemoryConnections::new(10)),
            refreshers(&[provider]),
            Policy::default(),
        );
        let identity = Identity {
            subject: "t/o".into(),
            email: None,
            email_verified: false,
            unverified_email: None,
            tenant: Some("t".into()),
        };
        let expired = Grant {
            access_token: Secret::new("at-1"),
            refresh_token: Some(Secret::new("rt-1")),
            id_token: None,
            token_type: "Bearer".into(),
            scope: String::new(),
            expiry: Some(SystemTime::now()),
        };
        let (conn, _) = connections
            .create("m365", &identity, s.scopes.clone(), expired)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let token = connections
            .token(&conn.id, Duration::from_secs(60), deadline)
            .unwrap();
        assert_eq!((token.access_token.expose(), token.generation), ("at-2", 1));
        let sent = upstream.requests();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].form_value("refresh_token").as_deref(), Some("rt-1"));
        assert_eq!(sent[0].form_value("scope"), Some(s.scopes.join(" ")));
    }
}
