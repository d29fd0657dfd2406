//! Identity providers behind one trait. The broker only knows this trait; each provider's quirks
//! (endpoints, client authentication, how identity is read and which claims vouch for it) live
//! in its own file: `oidc.rs` (any OpenID Connect provider), `google.rs`, `github.rs`,
//! `microsoft.rs`; what they share is the OAuth 2.0 code redemption (`oauth.rs`) and id_token
//! verification (`jwks.rs`).

pub mod github;
pub mod google;
pub mod jwks;
pub mod microsoft;
pub mod oauth;
pub mod oidc;

use crate::error::{Error, Reason, SignInFailure};
use crate::providers_config::{Kind, ProviderSettings};
use crate::secret::Secret;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// Tokens from the token endpoint, before any identity check. `Debug` shows no token: they are
/// `Secret`s.
#[derive(Debug)]
pub struct Grant {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
    pub token_type: String,
    pub scope: String,
    /// `None`: the token does not expire (no `expires_in`).
    pub expiry: Option<SystemTime>,
}

/// Who signed in, as the provider vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The provider's stable id of the account (never reassigned, unlike e-mail addresses).
    pub subject: String,
    /// The account's e-mail address, lower-cased.
    pub email: Option<String>,
    /// Whether the provider vouches that the address belongs to the account: only then does
    /// an e-mail match count.
    pub email_verified: bool,
    /// Another address the account carries that the provider does not vouch for, when `email`
    /// is one it does (Microsoft without a pinned tenant: Graph's `mail` when `xms_edov` vouches
    /// for a different id_token `email`). An expected e-mail matching only this fails as
    /// unverified.
    pub unverified_email: Option<String>,
    /// The tenant the account belongs to, for providers that have tenants.
    pub tenant: Option<String>,
}

pub trait Provider: Send + Sync {
    /// The name sessions and routes use (`m365`, `github`, `corp`).
    fn name(&self) -> &str;
    /// What a person knows the sign-in by, for pages ("GitHub", "Microsoft 365").
    fn display_name(&self) -> &str;
    /// Whether only read access can be granted (the success page says so).
    fn read_only(&self) -> bool {
        false
    }
    /// Where the provider sends the browser back to, exactly as registered with it.
    fn redirect_uri(&self) -> &str;
    /// The scopes of a new session: the configured ones, or `requested` when the provider's
    /// rules allow them (400 otherwise), plus what sign-in itself needs.
    fn scopes(&self, requested: Option<&[String]>) -> Result<Vec<String>, Error>;
    fn authorize_url(&self, request: &AuthorizeRequest) -> String;
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
    ) -> Result<Grant, SignInFailure>;
    /// Reads who signed in (id_token claims, profile calls) within `budget`, and applies the
    /// provider's own rules (tenant, hosted domain). `nonce` is the session's.
    fn identity(
        &self,
        grant: &Grant,
        nonce: &str,
        budget: Duration,
    ) -> Result<Identity, SignInFailure>;
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
    let url = &upstream.url;
    let response = crate::outbound::agent(budget)
        .get(url)
        .header("Accept", "application/json")
        // GitHub's API refuses requests without one.
        .header(
            "User-Agent",
            concat!("oauth-relay/", env!("CARGO_PKG_VERSION")),
        )
        .call();
    match &upstream.wanted {
        Wanted::AnyAnswer => response
            .map(|r| format!("HTTP {}", r.status().as_u16()))
            .map_err(|e| e.to_string()),
        Wanted::Discovery(issuer) => {
            let (status, document) = read_json(response)?;
            if status != 200 {
                return Err(format!("HTTP {status}"));
            }
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
            let mut response = response.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            if status != 200 {
                return Err(format!("HTTP {status}"));
            }
            let body = response
                .body_mut()
                .with_config()
                .limit(jwks::MAX_JWKS_BYTES as u64 + 1)
                .read_to_vec()
                .map_err(|e| e.to_string())?;
            let keys = jwks::usable_keys(&body)?;
            Ok(format!(
                "HTTP 200, {keys} usable signing key{}",
                if keys == 1 { "" } else { "s" }
            ))
        }
    }
}

/// Checks a provider's settings by its kind's rules and fills in its defaults. No network.
pub fn check_settings(s: &mut ProviderSettings) -> Result<(), String> {
    match s.kind {
        Kind::Oidc => oidc::check_settings(s),
        Kind::Google => google::check_settings(s),
        Kind::GitHub => github::check_settings(s),
        Kind::Microsoft => microsoft::check_settings(s),
    }
}

/// Builds a provider from checked settings; may ask the provider for its metadata (OpenID
/// Connect discovery) within `budget`. An error names the variable to fix.
pub fn build(s: &ProviderSettings, budget: Duration) -> Result<Arc<dyn Provider>, String> {
    Ok(match s.kind {
        Kind::Oidc => Arc::new(oidc::Oidc::new(s, "oidc", &s.name, budget)?),
        Kind::Google => Arc::new(google::Google::new(s, budget)?),
        Kind::GitHub => Arc::new(github::GitHub::new(s)),
        Kind::Microsoft => Arc::new(microsoft::Microsoft::new(s, budget)),
    })
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

/// Reads a JSON answer of at most 256 KiB: the status and the body (`Null` when not JSON).
pub fn read_json(
    response: Result<http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Value), String> {
    let mut response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(256 * 1024)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
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
        use super::oauth::tests::{json_reply, serve_once};
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
}
