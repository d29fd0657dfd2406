//! GitHub (kind `github`): OAuth 2.0, not OpenID Connect, so no id_token. The code is redeemed
//! through `oauth.rs` with the secret in the form and `Accept: application/json` (GitHub
//! answers form-encoded otherwise, and errors with HTTP 200). Who signed in comes from the REST
//! API: the subject is `GET /user`'s numeric `id` (logins can be renamed, ids cannot), and the
//! e-mail is the primary address of `GET /user/emails`, verified only if GitHub says so
//! (`/user`'s `email` is the public profile address, chosen freely, and is ignored). The API
//! wants a `User-Agent` and `Accept: application/vnd.github+json`. OAuth apps' tokens come
//! without a refresh token and do not expire, which is not a failure here. GitHub Enterprise:
//! set the authorize, token and API URLs.

use super::oauth::{self, ClientAuth};
use super::{allowed_subset, AuthorizeRequest, Grant, Identity, Provider, Upstream, Wanted};
use crate::error::{Error, Reason, SignInFailure};
use crate::providers_config::{split_scopes, ProviderSettings};
use crate::secret::Secret;
use serde_json::{json, Value};
use std::time::Duration;

pub const AUTHORIZE_URL: &str = "https://github.com/login/oauth/authorize";
pub const TOKEN_URL: &str = "https://github.com/login/oauth/access_token";
pub const API_URL: &str = "https://api.github.com";
/// `user:email` lets `/user/emails` answer; `read:user` is the profile, read-only.
pub const DEFAULT_SCOPES: &str = "read:user user:email";
const USER_AGENT: &str = concat!("oauth-relay/", env!("CARGO_PKG_VERSION"));

/// GitHub's rules for the settings: OAuth apps always have a secret; the github.com endpoints
/// unless others are set.
pub fn check_settings(s: &mut ProviderSettings) -> Result<(), String> {
    if s.client_secret.is_none() {
        return Err(format!(
            "{} (or {}_FILE) is required for provider {} (kind github): GitHub's token \
             endpoint authenticates every app with its client secret",
            s.var("CLIENT_SECRET"),
            s.var("CLIENT_SECRET"),
            s.name
        ));
    }
    if s.scopes.is_empty() {
        s.scopes = split_scopes(DEFAULT_SCOPES);
    }
    s.authorize_url.get_or_insert_with(|| AUTHORIZE_URL.into());
    s.token_url.get_or_insert_with(|| TOKEN_URL.into());
    s.api_url.get_or_insert_with(|| API_URL.into());
    Ok(())
}

pub struct GitHub {
    name: String,
    display_name: String,
    client_id: String,
    client_auth: ClientAuth,
    redirect_uri: String,
    authorize_url: String,
    token_url: String,
    api_url: String,
    scopes: Vec<String>,
    allowed_scopes: Vec<String>,
    client_var: String,
    secret_var: String,
    scopes_var: String,
    token_var: String,
    api_var: String,
}

impl GitHub {
    pub fn new(s: &ProviderSettings) -> GitHub {
        let secret = s.client_secret.clone().unwrap_or_else(|| Secret::new(""));
        GitHub {
            name: s.name.clone(),
            display_name: s.display_name.clone().unwrap_or_else(|| "GitHub".into()),
            client_id: s.client_id.clone(),
            client_auth: ClientAuth::SecretPost(secret),
            redirect_uri: s.redirect_uri.clone(),
            authorize_url: s
                .authorize_url
                .clone()
                .unwrap_or_else(|| AUTHORIZE_URL.into()),
            token_url: s.token_url.clone().unwrap_or_else(|| TOKEN_URL.into()),
            api_url: s.api_url.clone().unwrap_or_else(|| API_URL.into()),
            scopes: s.scopes.clone(),
            allowed_scopes: s.allowed().to_vec(),
            client_var: s.var("CLIENT_ID"),
            secret_var: s.var("CLIENT_SECRET"),
            scopes_var: s.var("SCOPES"),
            token_var: s.var("TOKEN_URL"),
            api_var: s.var("API_URL"),
        }
    }

    /// One REST API call: the JSON answer, or a `profile_failed` saying what went wrong.
    fn api(&self, path: &str, grant: &Grant, budget: Duration) -> Result<Value, SignInFailure> {
        let url = format!("{}{path}", self.api_url);
        let response = crate::outbound::agent(budget)
            .get(&url)
            .header(
                "Authorization",
                &format!("Bearer {}", grant.access_token.expose()),
            )
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header("User-Agent", USER_AGENT)
            .call();
        let failed = |detail: String| SignInFailure::new(Reason::ProfileFailed, detail);
        let (status, body) =
            super::read_json(response).map_err(|e| failed(format!("GET {path}: {e}")))?;
        if status != 200 {
            let hint = match (path, status) {
                ("/user/emails", 403 | 404) => Some(format!(
                    "GET /user/emails needs the user:email scope (an OAuth app: add it to {}) \
                     or the \"Email addresses\" read permission (a GitHub App)",
                    self.scopes_var
                )),
                (_, 401) => Some("GitHub refused the new token: check the API URL".into()),
                _ => None,
            };
            return Err(failed(format!(
                "GET {path} answered HTTP {status} {}",
                body["message"].as_str().unwrap_or("")
            ))
            .with_hint(hint));
        }
        Ok(body)
    }

    fn hint_for(&self, error: &str) -> Option<String> {
        let hint = match error {
            "incorrect_client_credentials" => format!(
                "GitHub refused the app's credentials: check {} and {}",
                self.client_var, self.secret_var
            ),
            "redirect_uri_mismatch" => format!(
                "set the OAuth app's authorization callback URL to {} exactly",
                self.redirect_uri
            ),
            "bad_verification_code" => {
                "the code was wrong, used already or older than 10 minutes".into()
            }
            "application_suspended" => "the OAuth app is suspended on GitHub".into(),
            "unverified_user_email" => {
                "GitHub requires the account to verify its primary e-mail first".into()
            }
            _ => return None,
        };
        Some(hint)
    }
}

/// The primary address of `/user/emails`, lower-cased, and whether GitHub verified it.
fn primary_email(emails: &Value) -> (Option<String>, bool) {
    let primary = emails
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["primary"] == Value::Bool(true));
    match primary {
        Some(e) => (
            e["email"]
                .as_str()
                .filter(|a| !a.is_empty())
                .map(str::to_lowercase),
            e["verified"] == Value::Bool(true),
        ),
        None => (None, false),
    }
}

impl Provider for GitHub {
    fn name(&self) -> &str {
        &self.name
    }

    fn display_name(&self) -> &str {
        &self.display_name
    }

    fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    fn scopes(&self, requested: Option<&[String]>) -> Result<Vec<String>, Error> {
        match requested {
            None => Ok(self.scopes.clone()),
            Some(list) => allowed_subset(list, &self.allowed_scopes),
        }
    }

    /// GitHub has no login hint by e-mail (its `login` takes a user name) and no consent
    /// prompt to force: an authorized app is not asked again.
    fn authorize_url(&self, r: &AuthorizeRequest) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &r.scopes.join(" "))
            .append_pair("state", r.state)
            .append_pair("code_challenge", r.code_challenge)
            .append_pair("code_challenge_method", "S256");
        format!("{}?{}", self.authorize_url, query.finish())
    }

    /// GitHub publishes no issuer identifier and sends no `iss` (RFC 9207); the redirect URI,
    /// which is this provider's alone, is what keeps responses from being mixed up. A response
    /// that does carry `iss` did not come from GitHub.
    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInFailure> {
        match iss {
            None => Ok(()),
            Some(iss) => Err(SignInFailure::new(
                Reason::IssuerMismatch,
                format!("GitHub sends no iss, yet the response names {iss:?}"),
            )),
        }
    }

    fn exchange(
        &self,
        code: &Secret,
        verifier: &Secret,
        _scopes: &[String],
        budget: Duration,
    ) -> Result<Grant, SignInFailure> {
        oauth::redeem(
            &oauth::Redemption {
                token_url: &self.token_url,
                client_id: &self.client_id,
                auth: &self.client_auth,
                redirect_uri: &self.redirect_uri,
                code,
                verifier,
                extra: &[],
            },
            budget,
            &|error| self.hint_for(error),
        )
    }

    fn identity(
        &self,
        grant: &Grant,
        _nonce: &str,
        budget: Duration,
    ) -> Result<Identity, SignInFailure> {
        let user = self.api("/user", grant, budget)?;
        let id = user["id"].as_u64().ok_or_else(|| {
            SignInFailure::new(Reason::ProfileFailed, "GET /user has no numeric id")
        })?;
        let emails = self.api("/user/emails", grant, budget)?;
        let (email, email_verified) = primary_email(&emails);
        Ok(Identity {
            subject: id.to_string(),
            email,
            email_verified,
            unverified_email: None,
            tenant: None,
        })
    }

    fn refresh_token_required(&self, _scopes: &[String]) -> bool {
        false
    }

    fn error_hint(&self, error: &str) -> Option<String> {
        self.hint_for(error)
    }

    fn describe(&self) -> Value {
        json!({
            "name": self.name,
            "kind": "github",
            "redirect_uri": self.redirect_uri,
            "authorize_url": self.authorize_url,
            "api_url": self.api_url,
            "scopes": self.scopes.join(" "),
        })
    }

    /// GitHub publishes no discovery document or keys (OAuth 2.0, not OpenID Connect): what the
    /// service calls is the token endpoint and the API (both answer without a credential, with
    /// an error, which is enough to show they are reachable).
    fn upstreams(&self) -> Vec<Upstream> {
        vec![
            Upstream {
                name: "token endpoint",
                url: self.token_url.clone(),
                wanted: Wanted::AnyAnswer,
                setting: self.token_var.clone(),
            },
            Upstream {
                name: "api",
                url: format!("{}/user", self.api_url),
                wanted: Wanted::AnyAnswer,
                setting: self.api_var.clone(),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_primary_address_counts_and_only_github_verifies_it() {
        let emails = json!([
            {"email": "old@example.com", "primary": false, "verified": true},
            {"email": "Ana@Example.com", "primary": true, "verified": true, "visibility": "private"},
        ]);
        assert_eq!(
            primary_email(&emails),
            (Some("ana@example.com".into()), true)
        );
        let unverified = json!([{"email": "ana@example.com", "primary": true, "verified": false}]);
        assert_eq!(
            primary_email(&unverified),
            (Some("ana@example.com".into()), false)
        );
        let stringly = json!([{"email": "ana@example.com", "primary": true, "verified": "true"}]);
        assert!(!primary_email(&stringly).1);
        assert_eq!(primary_email(&json!([])), (None, false));
        assert_eq!(
            primary_email(&json!({"message": "Not Found"})),
            (None, false)
        );
    }

    #[test]
    fn a_response_with_iss_did_not_come_from_github() {
        let mut s = crate::providers_config::tests_support::settings(
            "github",
            crate::providers_config::Kind::GitHub,
        );
        s.client_secret = Some(Secret::new("s"));
        check_settings(&mut s).unwrap();
        let g = GitHub::new(&s);
        assert!(g.check_response_issuer(None).is_ok());
        assert_eq!(
            g.check_response_issuer(Some("https://github.com"))
                .unwrap_err()
                .reason,
            Reason::IssuerMismatch
        );
        let url = g.authorize_url(&AuthorizeRequest {
            state: "st",
            code_challenge: "ch",
            nonce: "n",
            login_hint: Some("ana@example.com"),
            scopes: &g.scopes(None).unwrap(),
            force_consent: true,
        });
        assert!(url.starts_with("https://github.com/login/oauth/authorize?client_id="));
        assert!(url.contains("scope=read%3Auser+user%3Aemail"), "{url}");
        assert!(
            !url.contains("nonce") && !url.contains("login_hint"),
            "{url}"
        );
    }

    #[test]
    fn settings_need_a_secret_and_get_github_com_by_default() {
        let mut s = crate::providers_config::tests_support::settings(
            "gh",
            crate::providers_config::Kind::GitHub,
        );
        let e = check_settings(&mut s).unwrap_err();
        assert!(e.contains("OAUTH_RELAY_PROVIDER_GH_CLIENT_SECRET"), "{e}");
        s.client_secret = Some(Secret::new("s"));
        check_settings(&mut s).unwrap();
        assert_eq!(s.api_url.as_deref(), Some(API_URL));
        assert_eq!(s.scopes, ["read:user", "user:email"]);
        let g = GitHub::new(&s);
        assert_eq!(
            g.scopes(Some(&["repo".to_string()])),
            Err(Error::ScopeNotAllowed)
        );
    }
}
