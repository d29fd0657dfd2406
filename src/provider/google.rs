//! Google (kind `google`): OpenID Connect as `oidc.rs` does it, with Google's quirks. The issuer
//! defaults to `https://accounts.google.com`. Google sends a refresh token only when asked with
//! `access_type=offline`, and again after the first consent only with `prompt=consent`, so both
//! are always sent (the broker hands out refresh tokens). With `_HOSTED_DOMAIN` the verified
//! id_token's `hd` claim (the Google Workspace domain; consumer accounts have none) must be that
//! domain (`hosted_domain_mismatch`, this kind's own reason); `hd` is also sent as a hint to the
//! account chooser, which alone proves nothing.
//!
//! Refresh tokens: Google's do not change when used (`Rotation::NoRotation`), and one unused
//! for six months stops working; revocation is RFC 7009 at Google's revoke endpoint.

use super::oauth::{self, Revocation};
use super::oidc::{self, Oidc};
use super::settings::{Form, ProviderSettings, Setting};
use super::{AuthorizeRequest, Grant, Identity, Kind, Provider, Upstream};
use crate::connections::refresher::{RefreshOutcome, Refresher, Rotation};
use crate::error::{Error, OwnReason, Reason, SignInFailure, Words};
use crate::outbound::Http;
use crate::secret::Secret;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The `google` kind in the registry (`provider::KINDS`).
pub static KIND: Kind = Kind {
    name: "google",
    settings: &[
        Setting {
            name: "ISSUER",
            form: Form::Issuer,
        },
        Setting {
            name: "AUTHORIZE_URL",
            form: Form::Url,
        },
        Setting {
            name: "TOKEN_URL",
            form: Form::Url,
        },
        Setting {
            name: "HOSTED_DOMAIN",
            form: Form::Lowercase,
        },
    ],
    check: check_settings,
    build,
    reasons: &[&HOSTED_DOMAIN_MISMATCH],
};

pub const ISSUER: &str = "https://accounts.google.com";
pub const DEFAULT_SCOPES: &str = "openid email";
/// Where Google revokes a grant (RFC 7009), when discovery does not say.
pub const REVOKE_URL: &str = "https://oauth2.googleapis.com/revoke";
/// Google stops honouring a refresh token unused for six months (taken as the shortest six).
const IDLE_LIMIT: Duration = Duration::from_secs(181 * 24 * 3600);

/// The account is not in the configured Google Workspace domain.
pub static HOSTED_DOMAIN_MISMATCH: OwnReason = OwnReason {
    code: "hosted_domain_mismatch",
    status: 403,
    words: Words {
        en: [
            "This account's organization is not allowed",
            "The account you signed in with belongs to a different organization, so nothing was connected. Ask the assistant for a new link and sign in with your work account.",
        ],
        pt_br: [
            "A organização desta conta não é permitida",
            "A conta com que você entrou pertence a outra organização, então nada foi conectado. Peça um novo link ao assistente e entre com sua conta de trabalho.",
        ],
    },
};

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
    s.set_default("ISSUER", ISSUER);
    if let Some(domain) = s.get("HOSTED_DOMAIN") {
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

fn build(
    s: &ProviderSettings,
    http: Arc<dyn Http>,
    budget: Duration,
) -> Result<Arc<dyn Provider>, String> {
    Ok(Arc::new(Google::new(s, http, budget)?))
}

pub struct Google {
    oidc: Oidc,
    hosted_domain: Option<String>,
}

impl Google {
    pub fn new(
        s: &ProviderSettings,
        http: Arc<dyn Http>,
        budget: Duration,
    ) -> Result<Google, String> {
        let mut oidc = Oidc::new(s, "google", "Google", http, budget)?;
        let hosted_domain = s.get("HOSTED_DOMAIN").map(String::from);
        let client = &mut oidc.client;
        client.authorize_params = vec![
            ("access_type".into(), "offline".into()),
            ("prompt".into(), "consent".into()),
        ];
        if let Some(domain) = &hosted_domain {
            client.authorize_params.push(("hd".into(), domain.clone()));
        }
        if matches!(client.revocation, Revocation::Unsupported) {
            client.revocation = Revocation::Rfc7009(REVOKE_URL.into());
        }
        Ok(Google {
            oidc,
            hosted_domain,
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

    fn client(&self) -> &oauth::Client {
        self.oidc.client()
    }

    fn scopes(&self, requested: Option<&[String]>) -> Result<Vec<String>, Error> {
        self.oidc.scopes(requested)
    }

    /// `access_type=offline`, `prompt=consent` and `hd` are the client's own parameters.
    fn authorize_url(&self, r: &AuthorizeRequest) -> String {
        self.client().authorize_url(r, &[])
    }

    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInFailure> {
        self.oidc.check_response_issuer(iss)
    }

    fn identity(
        &self,
        grant: &Grant,
        nonce: &str,
        budget: Duration,
    ) -> Result<Identity, SignInFailure> {
        let (identity, claims) = self.oidc.verified_identity(grant, nonce, budget)?;
        check_hosted_domain(&claims, self.hosted_domain.as_deref())?;
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

/// Google's refresh tokens do not rotate, and die after six months unused.
impl Refresher for Google {
    fn rotation(&self) -> Rotation {
        Rotation::NoRotation
    }

    fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> RefreshOutcome {
        self.client().refresh(refresh_token, scopes, budget)
    }

    fn idle_limit(&self) -> Option<Duration> {
        Some(IDLE_LIMIT)
    }
}

/// With a hosted domain, the verified id_token's `hd` must be it.
fn check_hosted_domain(claims: &Value, domain: Option<&str>) -> Result<(), SignInFailure> {
    let Some(domain) = domain else { return Ok(()) };
    let hd = claims["hd"].as_str().map(str::to_ascii_lowercase);
    if hd.as_deref() == Some(domain) {
        return Ok(());
    }
    Err(SignInFailure::new(
        Reason::Own(&HOSTED_DOMAIN_MISMATCH),
        format!("the id_token's hd is {hd:?}, not {domain:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{Request, Response};
    use crate::provider::testing::{settings, Upstream};
    use serde_json::json;

    fn google(hosted_domain: Option<&str>, revocation: Option<&str>) -> (Google, Upstream) {
        let mut s = settings("google", &KIND);
        s.client_secret = Some(Secret::new("s"));
        if let Some(d) = hosted_domain {
            s.own.insert("HOSTED_DOMAIN", d.into());
        }
        check_settings(&mut s).unwrap();
        let mut document = json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
            "token_endpoint": "https://oauth2.googleapis.com/token",
            "jwks_uri": "https://www.googleapis.com/oauth2/v3/certs",
            "code_challenge_methods_supported": ["plain", "S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        });
        if let Some(url) = revocation {
            document["revocation_endpoint"] = json!(url);
        }
        let body = document.to_string();
        let upstream = Upstream::new(move |r: &Request| {
            Ok(if r.url.ends_with("openid-configuration") {
                Response::new(200, body.clone())
            } else {
                Response::new(200, r#"{"access_token":"at2"}"#)
            })
        });
        let g = Google::new(&s, upstream.http.clone(), Duration::from_secs(5)).unwrap();
        (g, upstream)
    }

    #[test]
    fn every_sign_in_asks_for_offline_access_and_consent_and_hints_the_domain() {
        let (g, upstream) = google(Some("example.com"), None);
        assert_eq!(
            upstream.requests()[0].url,
            "https://accounts.google.com/.well-known/openid-configuration",
            "the issuer by default"
        );
        let scopes = g.scopes(None).unwrap();
        let url = g.authorize_url(&AuthorizeRequest {
            state: "st",
            code_challenge: "ch",
            nonce: "n",
            login_hint: None,
            scopes: &scopes,
            force_consent: false,
        });
        assert!(
            url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"),
            "{url}"
        );
        assert!(
            url.ends_with("&access_type=offline&hd=example.com&prompt=consent"),
            "{url}"
        );
        assert_eq!(url.matches("prompt=").count(), 1, "{url}");
    }

    #[test]
    fn the_hosted_domain_must_be_the_id_tokens_hd() {
        assert!(check_hosted_domain(&json!({}), None).is_ok());
        assert!(check_hosted_domain(&json!({"hd": "Example.com"}), Some("example.com")).is_ok());
        for claims in [json!({}), json!({"hd": "other.example"})] {
            let f = check_hosted_domain(&claims, Some("example.com")).unwrap_err();
            assert_eq!(f.reason.code(), "hosted_domain_mismatch");
            assert_eq!(f.reason.status(), 403);
        }
    }

    #[test]
    fn google_refresh_tokens_do_not_rotate_and_are_revoked_at_googles_endpoint() {
        let (g, upstream) = google(None, None);
        assert_eq!(g.rotation(), Rotation::NoRotation);
        assert_eq!(g.idle_limit(), Some(IDLE_LIMIT));
        let budget = Duration::from_secs(5);
        assert_eq!(g.refresh(&Secret::new("rt"), &[], budget).kind(), "granted");
        g.revoke(None, Some(&Secret::new("rt")), budget).unwrap();
        let sent = upstream.requests();
        assert_eq!(sent[1].url, "https://oauth2.googleapis.com/token");
        // Google lists client_secret_basic: the secret goes as HTTP Basic, on both calls.
        assert!(sent[1]
            .header_value("authorization")
            .unwrap()
            .starts_with("Basic "));
        assert_eq!(sent[2].url, REVOKE_URL);
        assert!(sent[2]
            .header_value("authorization")
            .unwrap()
            .starts_with("Basic "));
        assert_eq!(sent[2].form_value("token").as_deref(), Some("rt"));
        drop(sent);
        let (g, upstream) = google(None, Some("https://accounts.example/revoke"));
        g.revoke(None, Some(&Secret::new("rt")), budget).unwrap();
        assert_eq!(
            upstream.requests()[1].url,
            "https://accounts.example/revoke"
        );
    }

    #[test]
    fn settings_need_a_secret_and_a_plausible_domain() {
        let mut s = settings("go", &KIND);
        assert!(check_settings(&mut s)
            .unwrap_err()
            .contains("OAUTH_RELAY_PROVIDER_GO_CLIENT_SECRET"));
        s.client_secret = Some(Secret::new("s"));
        s.own.insert("HOSTED_DOMAIN", "not a domain".into());
        assert!(check_settings(&mut s)
            .unwrap_err()
            .contains("OAUTH_RELAY_PROVIDER_GO_HOSTED_DOMAIN"));
        s.own.remove("HOSTED_DOMAIN");
        check_settings(&mut s).unwrap();
        assert_eq!(s.get("ISSUER"), Some(ISSUER));
        assert_eq!(s.scopes, ["openid", "email"]);
    }
}
