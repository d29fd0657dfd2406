//! GitHub (kind `github`): OAuth 2.0, not OpenID Connect, so no id_token. The code is redeemed
//! through `oauth.rs` with the secret in the form and `Accept: application/json` (GitHub
//! answers form-encoded otherwise, and errors with HTTP 200). Who signed in comes from the REST
//! API: the subject is `GET /user`'s numeric `id` (logins can be renamed, ids cannot), and the
//! e-mail is the primary address of `GET /user/emails`, verified only if GitHub says so
//! (`/user`'s `email` is the public profile address, chosen freely, and is ignored). The API
//! wants a `User-Agent` and `Accept: application/vnd.github+json`. OAuth apps' tokens come
//! without a refresh token and do not expire, which is not a failure here. GitHub Enterprise:
//! set the authorize, token and API URLs.

//!
//! Refresh tokens exist only for GitHub Apps with expiring user tokens: each is good for one
//! use (`Rotation::OneTime`) and for six months. A grant is ended by deleting the app
//! authorization (`DELETE {API_URL}/applications/{client_id}/grant`, Basic auth with the
//! client id and secret, the access token in the body).

use super::oauth::{self, ClientAuth, Revocation};
use super::settings::{split_scopes, Form, ProviderSettings, Setting};
use super::{allowed_subset, Grant, Identity, Kind, Provider, Upstream, Wanted};
use crate::connections::refresher::{RefreshOutcome, Refresher, Rotation};
use crate::error::{Error, Reason, SignInFailure};
use crate::outbound::{Http, Request};
use crate::secret::Secret;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The `github` kind in the registry (`provider::KINDS`).
pub static KIND: Kind = Kind {
    name: "github",
    settings: &[
        Setting {
            name: "AUTHORIZE_URL",
            form: Form::Url,
        },
        Setting {
            name: "TOKEN_URL",
            form: Form::Url,
        },
        Setting {
            name: "API_URL",
            form: Form::Url,
        },
    ],
    check: check_settings,
    build: |s, http, _budget| Ok(Arc::new(GitHub::new(s, http))),
    reasons: &[],
};

pub const AUTHORIZE_URL: &str = "https://github.com/login/oauth/authorize";
pub const TOKEN_URL: &str = "https://github.com/login/oauth/access_token";
pub const API_URL: &str = "https://api.github.com";
/// `user:email` lets `/user/emails` answer; `read:user` is the profile, read-only.
pub const DEFAULT_SCOPES: &str = "read:user user:email";
const USER_AGENT: &str = concat!("oauth-relay/", env!("CARGO_PKG_VERSION"));
/// The REST API version the calls are written for.
const API_VERSION: &str = "2022-11-28";
/// A GitHub App's refresh token lives six months (`refresh_token_expires_in`: 15,897,600
/// seconds), and each refresh brings a new one: unused that long, the grant is gone.
const IDLE_LIMIT: Duration = Duration::from_secs(15_897_600);

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
    s.set_default("AUTHORIZE_URL", AUTHORIZE_URL);
    s.set_default("TOKEN_URL", TOKEN_URL);
    s.set_default("API_URL", API_URL);
    Ok(())
}

pub struct GitHub {
    name: String,
    display_name: String,
    client: oauth::Client,
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
    pub fn new(s: &ProviderSettings, http: Arc<dyn Http>) -> GitHub {
        let secret = s.client_secret.clone().unwrap_or_else(|| Secret::new(""));
        let api_url = s.get("API_URL").unwrap_or(API_URL).to_string();
        let client = oauth::Client {
            // OAuth 2.0, not OpenID Connect: no nonce, no login hint by e-mail (its `login`
            // takes a user name), no consent prompt to force (an authorized app is not asked
            // again).
            openid: false,
            revocation: Revocation::GrantDeletion {
                url: format!(
                    "{api_url}/applications/{}/grant",
                    form_urlencoded::byte_serialize(s.client_id.as_bytes()).collect::<String>()
                ),
                headers: api_headers(),
            },
            ..oauth::Client::new(
                &s.client_id,
                ClientAuth::SecretPost(secret),
                &s.redirect_uri,
                s.get("AUTHORIZE_URL").unwrap_or(AUTHORIZE_URL),
                s.get("TOKEN_URL").unwrap_or(TOKEN_URL),
                http,
            )
        };
        GitHub {
            name: s.name.clone(),
            display_name: s.display_name.clone().unwrap_or_else(|| "GitHub".into()),
            client,
            api_url,
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
        let mut request = Request::get(format!("{}{path}", self.api_url), budget).header(
            "Authorization",
            format!("Bearer {}", grant.access_token.expose()),
        );
        for (name, value) in api_headers() {
            request = request.header(name, value);
        }
        let failed = |detail: String| SignInFailure::new(Reason::ProfileFailed, detail);
        let (status, body) = super::call_json(&*self.client.http, request)
            .map_err(|e| failed(format!("GET {path}: {e}")))?;
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
                self.client.redirect_uri
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

/// The headers GitHub's REST API wants on every call.
fn api_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Accept", "application/vnd.github+json".into()),
        ("X-GitHub-Api-Version", API_VERSION.into()),
        ("User-Agent", USER_AGENT.into()),
    ]
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

    fn client(&self) -> &oauth::Client {
        &self.client
    }

    fn scopes(&self, requested: Option<&[String]>) -> Result<Vec<String>, Error> {
        match requested {
            None => Ok(self.scopes.clone()),
            Some(list) => allowed_subset(list, &self.allowed_scopes),
        }
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
            "redirect_uri": self.client.redirect_uri,
            "authorize_url": self.client.authorize_endpoint,
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
                url: self.client.token_endpoint.clone(),
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

/// GitHub Apps' refresh tokens are good for one use and six months.
impl Refresher for GitHub {
    fn rotation(&self) -> Rotation {
        Rotation::OneTime
    }

    fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> RefreshOutcome {
        self.client.refresh(refresh_token, scopes, budget)
    }

    fn idle_limit(&self) -> Option<Duration> {
        Some(IDLE_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Response;
    use crate::provider::testing::{settings, Upstream};
    use crate::provider::AuthorizeRequest;

    fn github(upstream: &Upstream) -> GitHub {
        let mut s = settings("github", &KIND);
        s.client_secret = Some(Secret::new("s"));
        check_settings(&mut s).unwrap();
        GitHub::new(&s, upstream.http.clone())
    }

    fn grant() -> Grant {
        Grant {
            access_token: Secret::new("gho_at"),
            refresh_token: None,
            id_token: None,
            token_type: "bearer".into(),
            scope: String::new(),
            expiry: None,
        }
    }

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
        let g = github(&Upstream::unreachable());
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
        let mut s = settings("gh", &KIND);
        let e = check_settings(&mut s).unwrap_err();
        assert!(e.contains("OAUTH_RELAY_PROVIDER_GH_CLIENT_SECRET"), "{e}");
        s.client_secret = Some(Secret::new("s"));
        check_settings(&mut s).unwrap();
        assert_eq!(s.get("API_URL"), Some(API_URL));
        assert_eq!(s.scopes, ["read:user", "user:email"]);
        let g = GitHub::new(&s, Upstream::unreachable().http);
        assert_eq!(
            g.scopes(Some(&["repo".to_string()])),
            Err(Error::ScopeNotAllowed)
        );
    }

    #[test]
    fn who_signed_in_is_read_from_the_rest_api_with_githubs_headers() {
        let upstream = Upstream::new(|r| {
            Ok(match r.url.as_str() {
                "https://api.github.com/user" => Response::new(
                    200,
                    r#"{"id":5830144,"login":"ana","email":"public@example.com"}"#,
                ),
                "https://api.github.com/user/emails" => Response::new(
                    200,
                    r#"[{"email":"Ana@Example.com","primary":true,"verified":true}]"#,
                ),
                _ => Response::new(404, "{}"),
            })
        });
        let identity = github(&upstream)
            .identity(&grant(), "unused", Duration::from_secs(5))
            .unwrap();
        assert_eq!(identity.subject, "5830144");
        assert_eq!(identity.email.as_deref(), Some("ana@example.com"));
        assert!(identity.email_verified);
        for r in upstream.requests().iter() {
            assert_eq!(r.header_value("authorization"), Some("Bearer gho_at"));
            assert_eq!(
                r.header_value("accept"),
                Some("application/vnd.github+json")
            );
            assert_eq!(r.header_value("x-github-api-version"), Some(API_VERSION));
            assert!(r
                .header_value("user-agent")
                .unwrap()
                .starts_with("oauth-relay/"));
        }
    }

    #[test]
    fn a_profile_call_that_fails_says_what_to_fix() {
        let upstream = Upstream::new(|r| {
            Ok(match r.url.as_str() {
                "https://api.github.com/user" => Response::new(200, r#"{"id":1}"#),
                _ => Response::new(403, r#"{"message":"Resource not accessible"}"#),
            })
        });
        let f = github(&upstream)
            .identity(&grant(), "", Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(f.reason, Reason::ProfileFailed);
        assert_eq!(
            f.detail,
            "GET /user/emails answered HTTP 403 Resource not accessible"
        );
        assert!(f
            .hint
            .unwrap()
            .contains("OAUTH_RELAY_PROVIDER_GITHUB_SCOPES"));
        let f = github(&Upstream::answering(200, r#"{"login":"ana"}"#))
            .identity(&grant(), "", Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(f.detail, "GET /user has no numeric id");
        let f = github(&Upstream::unreachable())
            .identity(&grant(), "", Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(f.detail, "GET /user: connection refused");
    }

    #[test]
    fn the_code_is_redeemed_with_the_secret_in_the_form_and_errors_get_hints() {
        let upstream = Upstream::answering(
            200,
            r#"{"error":"incorrect_client_credentials","error_description":"The client_id and/or client_secret passed are incorrect."}"#,
        );
        let g = github(&upstream);
        let f = g
            .exchange(
                &Secret::new("code"),
                &Secret::new("verifier"),
                &[],
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert_eq!(f.reason, Reason::ExchangeFailed);
        assert!(f
            .hint
            .unwrap()
            .contains("OAUTH_RELAY_PROVIDER_GITHUB_CLIENT_SECRET"));
        let sent = upstream.requests();
        assert_eq!(sent[0].url, TOKEN_URL);
        assert_eq!(sent[0].form_value("client_secret").as_deref(), Some("s"));
        assert_eq!(sent[0].form_value("scope"), None);
    }

    #[test]
    fn refresh_tokens_are_one_time_and_a_grant_is_ended_by_deleting_it() {
        let upstream = Upstream::new(|r| {
            Ok(match r.method {
                "DELETE" => Response::new(204, ""),
                _ => Response::new(200, r#"{"error":"bad_refresh_token"}"#),
            })
        });
        let g = github(&upstream);
        assert_eq!(g.rotation(), Rotation::OneTime);
        assert_eq!(g.idle_limit(), Some(IDLE_LIMIT));
        let budget = Duration::from_secs(5);
        assert_eq!(
            g.refresh(&Secret::new("ghr_1"), &[], budget).kind(),
            "invalid_grant"
        );
        g.revoke(Some(&Secret::new("gho_at")), None, budget)
            .unwrap();
        let sent = upstream.requests();
        let delete = &sent[1];
        assert_eq!(
            delete.url,
            "https://api.github.com/applications/client/grant"
        );
        assert!(delete
            .header_value("authorization")
            .unwrap()
            .starts_with("Basic "));
        assert_eq!(
            delete.header_value("accept"),
            Some("application/vnd.github+json")
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&delete.body).unwrap(),
            json!({"access_token": "gho_at"})
        );
    }
}
