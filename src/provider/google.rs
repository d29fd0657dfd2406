//! Google (kind `google`): OpenID Connect as `oidc.rs` does it, with Google's quirks. The issuer
//! defaults to `https://accounts.google.com`. Google sends a refresh token only when asked with
//! `access_type=offline`, and again after the first consent only with `prompt=consent`, so both
//! are always sent (the broker hands out refresh tokens). With `_HOSTED_DOMAIN` the verified
//! id_token's `hd` claim (the Google Workspace domain; consumer accounts have none) must be that
//! domain; `hd` is also sent as a hint to the account chooser, which alone proves nothing.

use super::oidc::{self, Oidc};
use super::{AuthorizeRequest, Grant, Identity, Provider, Upstream};
use crate::error::{Error, Reason, SignInFailure};
use crate::providers_config::ProviderSettings;
use crate::secret::Secret;
use serde_json::Value;
use std::time::Duration;

pub const ISSUER: &str = "https://accounts.google.com";
pub const DEFAULT_SCOPES: &str = "openid email";

/// Google's rules for the settings: a client secret (Google's web clients have one), the issuer
/// by default, a hosted domain that looks like one.
pub fn check_settings(s: &mut ProviderSettings) -> Result<(), String> {
    if s.client_secret.is_none() {
        return Err(format!(
            "{} (or {}_FILE) is required for provider {} (kind google): Google's web \
             application clients authenticate with their secret",
            s.var("CLIENT_SECRET"),
            s.var("CLIENT_SECRET"),
            s.name
        ));
    }
    s.issuer.get_or_insert_with(|| ISSUER.into());
    if let Some(domain) = &s.hosted_domain {
        let plausible = domain.contains('.')
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !plausible {
            return Err(format!(
                "{} must be a domain name such as example.com",
                s.var("HOSTED_DOMAIN")
            ));
        }
    }
    oidc::default_scopes(s, DEFAULT_SCOPES);
    Ok(())
}

pub struct Google {
    oidc: Oidc,
    hosted_domain: Option<String>,
}

impl Google {
    pub fn new(s: &ProviderSettings, budget: Duration) -> Result<Google, String> {
        Ok(Google {
            oidc: Oidc::new(s, "google", "Google", budget)?,
            hosted_domain: s.hosted_domain.clone(),
        })
    }
}

impl Provider for Google {
    fn name(&self) -> &str {
        self.oidc.name()
    }

    fn display_name(&self) -> &str {
        self.oidc.display_name()
    }

    fn redirect_uri(&self) -> &str {
        self.oidc.redirect_uri()
    }

    fn scopes(&self, requested: Option<&[String]>) -> Result<Vec<String>, Error> {
        self.oidc.scopes(requested)
    }

    fn authorize_url(&self, r: &AuthorizeRequest) -> String {
        let mut extra = vec![("access_type", "offline"), ("prompt", "consent")];
        if let Some(domain) = &self.hosted_domain {
            extra.push(("hd", domain.as_str()));
        }
        self.oidc.authorize_url_with(r, &extra)
    }

    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInFailure> {
        self.oidc.check_response_issuer(iss)
    }

    fn exchange(
        &self,
        code: &Secret,
        verifier: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> Result<Grant, SignInFailure> {
        self.oidc.exchange(code, verifier, scopes, budget)
    }

    fn identity(
        &self,
        grant: &Grant,
        nonce: &str,
        budget: Duration,
    ) -> Result<Identity, SignInFailure> {
        let (identity, claims) = self.oidc.verified_identity(grant, nonce, budget)?;
        if let Some(domain) = &self.hosted_domain {
            let hd = claims["hd"].as_str().map(str::to_ascii_lowercase);
            if hd.as_deref() != Some(domain.as_str()) {
                return Err(SignInFailure::new(
                    Reason::HostedDomainMismatch,
                    format!("the id_token's hd is {hd:?}, not {domain:?}"),
                ));
            }
        }
        Ok(identity)
    }

    fn refresh_token_required(&self, _scopes: &[String]) -> bool {
        true
    }

    fn no_refresh_token_hint(&self) -> Option<String> {
        Some("Google sent no refresh token despite access_type=offline and prompt=consent: check the client type (a web application) and the consent screen".into())
    }

    fn error_hint(&self, error: &str) -> Option<String> {
        self.oidc.error_hint(error)
    }

    fn describe(&self) -> Value {
        let mut d = self.oidc.describe();
        d["hosted_domain"] = self.hosted_domain.clone().into();
        d
    }

    fn upstreams(&self) -> Vec<Upstream> {
        self.oidc.upstreams()
    }
}
