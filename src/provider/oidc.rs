//! Any OpenID Connect provider (kind `oidc`), and the core `google.rs` builds on. At start-up the
//! provider's metadata is read from `{issuer}/.well-known/openid-configuration` (OpenID Connect
//! Discovery 1.0, section 4): its `issuer` must equal the configured one exactly, its endpoints
//! must be https (http on loopback, for tests), and it must support PKCE with S256; anything
//! else stops start-up naming the variable. Sign-ins use PKCE S256 and a `nonce` per session;
//! the id_token is verified against the provider's JWKS (`jwks.rs`); the RFC 9207 `iss`
//! parameter is required when the provider promises it. An e-mail counts only when the
//! provider says `email_verified: true`; the subject is `sub`.
//!
//! Refresh tokens: providers differ, and discovery does not say how, so a used refresh token is
//! taken to be dead once rotated (`Rotation::OneTime`: Okta, Auth0, Keycloak and Dex with
//! rotation, RFC 9700's reuse detection) unless `REFRESH_ROTATION` says otherwise; how long one
//! may lie unused is `REFRESH_IDLE_DAYS` (unset: no limit). A grant is revoked at the
//! discovered `revocation_endpoint` (RFC 7009), when there is one.

use super::jwks::{Expect, Keys};
use super::oauth::{self, ClientAuth, Revocation};
use super::settings::{split_scopes, Form, ProviderSettings, Setting};
use super::{
    allowed_subset, with_scopes, AuthorizeRequest, Grant, Identity, Kind, Provider, Upstream,
    Wanted,
};
use crate::connections::refresher::{RefreshOutcome, Refresher, Rotation};
use crate::error::{Error, Reason, SignInFailure};
use crate::outbound::{Http, Request};
use crate::secret::Secret;
use crate::urls::checked_url;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The `oidc` kind in the registry (`provider::KINDS`).
pub static KIND: Kind = Kind {
    name: "oidc",
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
            name: "REFRESH_ROTATION",
            form: Form::Text,
        },
        Setting {
            name: "REFRESH_IDLE_DAYS",
            form: Form::Text,
        },
    ],
    check: check_settings,
    build: |s, http, budget| Ok(Arc::new(Oidc::new(s, "oidc", &s.name, http, budget)?)),
    reasons: &[],
};

pub const DEFAULT_SCOPES: &str = "openid email";
/// The least time between two JWKS fetches (an unknown `kid` triggers one). Short, because
/// id_tokens reach us only from token endpoints, in sign-ins the broker started: an unknown
/// `kid` means the provider rotated its keys (it cannot be sent at will), and a person whose
/// sign-in lands just after a fetch must not fail for a longer wait. It still bounds a provider
/// that signs with a key it never publishes to one fetch a second.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(1);
/// `REFRESH_ROTATION` when unset: the rule that is safe whatever the provider does.
pub const DEFAULT_ROTATION: &str = "one-time";
/// The longest `REFRESH_IDLE_DAYS` (ten years: longer is no limit at all).
const MAX_IDLE_DAYS: u64 = 3650;

/// `REFRESH_ROTATION`'s values: `one-time` (a rotated refresh token is dead, and presenting it
/// again may revoke the grant), `reusable` (a rotated one stays valid, as Microsoft Entra's do),
/// `none` (the refresh token never changes, as Google's does not).
fn rotation_of(value: &str) -> Option<Rotation> {
    match value {
        "one-time" => Some(Rotation::OneTime),
        "reusable" => Some(Rotation::ReusableAfterRotation),
        "none" => Some(Rotation::NoRotation),
        _ => None,
    }
}

/// Checks the settings of an `oidc` provider: an issuer is required; the refresh rules, when
/// set, must be ones the relay knows.
pub fn check_settings(s: &mut ProviderSettings) -> Result<(), String> {
    if s.get("ISSUER").is_none() {
        return Err(format!(
            "{} is required for provider {} (kind oidc): the issuer's URL, as in its discovery \
             document",
            s.var("ISSUER"),
            s.name
        ));
    }
    if let Some(rotation) = s.get("REFRESH_ROTATION") {
        if rotation_of(rotation).is_none() {
            return Err(format!(
                "{} must be one-time, reusable or none, not {rotation:?}",
                s.var("REFRESH_ROTATION")
            ));
        }
    }
    s.set_default("REFRESH_ROTATION", DEFAULT_ROTATION);
    if let Some(days) = s.get("REFRESH_IDLE_DAYS") {
        if !days
            .parse::<u64>()
            .is_ok_and(|d| (1..=MAX_IDLE_DAYS).contains(&d))
        {
            return Err(format!(
                "{} must be a number of days from 1 to {MAX_IDLE_DAYS}, not {days:?}",
                s.var("REFRESH_IDLE_DAYS")
            ));
        }
    }
    default_scopes(s, DEFAULT_SCOPES);
    Ok(())
}

/// Fills in the scopes when none are configured; `openid` is always requested.
pub fn default_scopes(s: &mut ProviderSettings, default: &str) {
    if s.scopes.is_empty() {
        s.scopes = split_scopes(default);
    }
    s.scopes = with_scopes(std::mem::take(&mut s.scopes), &["openid"]);
}

/// What discovery told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub userinfo_endpoint: Option<String>,
    /// RFC 9207: authorization responses carry `iss`.
    pub iss_parameter_supported: bool,
    /// `token_endpoint_auth_methods_supported` (OpenID Connect's default when absent).
    pub auth_methods: Vec<String>,
    /// RFC 7009's endpoint (RFC 8414 `revocation_endpoint`), when advertised as an https URL.
    /// Revocation is best effort, so one that is not is left unused rather than stopping
    /// start-up.
    pub revocation_endpoint: Option<String>,
}

/// Reads and checks `document`, the discovery answer for `issuer`. `var` names the issuer's
/// variable in errors.
pub fn parse_metadata(document: &Value, issuer: &str, var: &str) -> Result<Metadata, String> {
    let found = document["issuer"].as_str().unwrap_or("");
    if found != issuer {
        return Err(format!(
            "{var}: the discovery document names the issuer {found:?}, not {issuer:?} (they must \
             be equal exactly, trailing slash included)"
        ));
    }
    let endpoint = |field: &str| -> Result<String, String> {
        let value = document[field]
            .as_str()
            .ok_or(format!("{var}: the discovery document has no {field}"))?;
        checked_url(value, &format!("{var} (the discovered {field})"))
    };
    let methods: Vec<&str> = document["code_challenge_methods_supported"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !methods.contains(&"S256") {
        return Err(format!(
            "{var}: the provider does not list S256 in code_challenge_methods_supported \
             ({methods:?}); the broker requires PKCE with S256"
        ));
    }
    let auth_methods = match document["token_endpoint_auth_methods_supported"].as_array() {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        // OpenID Connect Discovery 3: "If omitted, the default is client_secret_basic".
        None => vec!["client_secret_basic".to_string()],
    };
    Ok(Metadata {
        issuer: issuer.to_string(),
        authorization_endpoint: endpoint("authorization_endpoint")?,
        token_endpoint: endpoint("token_endpoint")?,
        jwks_uri: endpoint("jwks_uri")?,
        userinfo_endpoint: match document.get("userinfo_endpoint") {
            None | Some(Value::Null) => None,
            Some(_) => Some(endpoint("userinfo_endpoint")?),
        },
        iss_parameter_supported: document["authorization_response_iss_parameter_supported"]
            .as_bool()
            .unwrap_or(false),
        auth_methods,
        revocation_endpoint: document["revocation_endpoint"]
            .as_str()
            .and_then(|url| checked_url(url, "revocation_endpoint").ok()),
    })
}

/// Discovery 4.1: the issuer with any terminating "/" removed, then the well-known path.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Fetches `{issuer}/.well-known/openid-configuration` through `http` within `budget`.
pub fn discover(
    http: &dyn Http,
    issuer: &str,
    var: &str,
    budget: Duration,
) -> Result<Metadata, String> {
    let url = discovery_url(issuer);
    let (status, document) = super::call_json(
        http,
        Request::get(&url, budget).header("Accept", "application/json"),
    )
    .map_err(|e| format!("{var}: OpenID Connect discovery at {url} failed: {e}"))?;
    if status != 200 || !document.is_object() {
        return Err(format!(
            "{var}: OpenID Connect discovery at {url} answered HTTP {status}{}",
            if document.is_object() {
                ""
            } else {
                " without a JSON document"
            }
        ));
    }
    parse_metadata(&document, issuer, var)
}

/// The client authentication the provider accepts: Basic (the default) or the form, when the
/// client has a secret; none for a public client.
fn client_auth(s: &ProviderSettings, metadata: &Metadata) -> Result<ClientAuth, String> {
    let Some(secret) = &s.client_secret else {
        return Ok(ClientAuth::None);
    };
    let offers = |m: &str| metadata.auth_methods.iter().any(|x| x == m);
    if offers("client_secret_basic") {
        Ok(ClientAuth::SecretBasic(secret.clone()))
    } else if offers("client_secret_post") {
        Ok(ClientAuth::SecretPost(secret.clone()))
    } else {
        Err(format!(
            "{}: the provider accepts neither client_secret_basic nor client_secret_post at its \
             token endpoint ({:?})",
            s.var("CLIENT_SECRET"),
            metadata.auth_methods
        ))
    }
}

/// An OpenID Connect provider, discovered.
pub struct Oidc {
    name: String,
    kind: &'static str,
    display_name: String,
    /// The OAuth client; Google adds its parameters and revocation endpoint to it.
    pub(super) client: oauth::Client,
    metadata: Metadata,
    keys: Keys,
    scopes: Vec<String>,
    allowed_scopes: Vec<String>,
    rotation: Rotation,
    idle_limit: Option<Duration>,
    client_var: String,
    secret_var: String,
    issuer_var: String,
}

impl Oidc {
    /// Discovers the provider through `http` and sets it up. `display_default` names it on
    /// pages when `DISPLAY_NAME` is unset.
    pub fn new(
        s: &ProviderSettings,
        kind: &'static str,
        display_default: &str,
        http: Arc<dyn Http>,
        budget: Duration,
    ) -> Result<Oidc, String> {
        let issuer = s
            .get("ISSUER")
            .ok_or(format!("{} is required", s.var("ISSUER")))?;
        let mut metadata = discover(&*http, issuer, &s.var("ISSUER"), budget)?;
        // Explicit endpoints win over discovered ones (a proxy, a private network path).
        if let Some(url) = s.get("AUTHORIZE_URL") {
            metadata.authorization_endpoint = url.to_string();
        }
        if let Some(url) = s.get("TOKEN_URL") {
            metadata.token_endpoint = url.to_string();
        }
        let keys = Keys::new(metadata.jwks_uri.clone(), http.clone(), JWKS_MIN_REFETCH);
        let mut client = oauth::Client::new(
            &s.client_id,
            client_auth(s, &metadata)?,
            &s.redirect_uri,
            &metadata.authorization_endpoint,
            &metadata.token_endpoint,
            http,
        );
        if let Some(endpoint) = &metadata.revocation_endpoint {
            client.revocation = Revocation::Rfc7009(endpoint.clone());
        }
        Ok(Oidc {
            name: s.name.clone(),
            kind,
            display_name: s
                .display_name
                .clone()
                .unwrap_or_else(|| display_default.into()),
            client,
            keys,
            scopes: s.scopes.clone(),
            allowed_scopes: with_scopes(s.allowed().to_vec(), &["openid"]),
            rotation: s
                .get("REFRESH_ROTATION")
                .and_then(rotation_of)
                .unwrap_or(Rotation::OneTime),
            idle_limit: s
                .get("REFRESH_IDLE_DAYS")
                .and_then(|d| d.parse::<u64>().ok())
                .map(|days| Duration::from_secs(days * 24 * 3600)),
            client_var: s.var("CLIENT_ID"),
            secret_var: s.var("CLIENT_SECRET"),
            issuer_var: s.var("ISSUER"),
            metadata,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.metadata.issuer
    }

    /// The identity and the verified id_token's claims (for rules on other claims).
    pub fn verified_identity(
        &self,
        grant: &Grant,
        nonce: &str,
        budget: Duration,
    ) -> Result<(Identity, Value), SignInFailure> {
        let id_token = grant.id_token.as_ref().ok_or_else(|| {
            SignInFailure::new(
                Reason::IdTokenInvalid,
                "the token response has no id_token (is openid among the scopes?)",
            )
        })?;
        let claims = self.keys.verify(
            id_token.expose(),
            &Expect {
                issuer: &self.metadata.issuer,
                audience: &self.client.client_id,
                nonce: Some(nonce),
            },
            budget,
        )?;
        let subject = claims["sub"].as_str().unwrap_or_default().to_string();
        let (email, email_verified) = if claims.get("email").is_some() {
            email_of(&claims)
        } else {
            self.userinfo_email(grant, &subject, budget)?
        };
        Ok((
            Identity {
                subject,
                email,
                email_verified,
                unverified_email: None,
                tenant: None,
            },
            claims,
        ))
    }

    /// The e-mail from the userinfo endpoint, for providers that keep it out of the id_token
    /// (OpenID Connect Core 5.4 allows either). Its `sub` must be the id_token's (5.3.4).
    fn userinfo_email(
        &self,
        grant: &Grant,
        subject: &str,
        budget: Duration,
    ) -> Result<(Option<String>, bool), SignInFailure> {
        let Some(url) = &self.metadata.userinfo_endpoint else {
            return Ok((None, false));
        };
        let failed = |detail: String| SignInFailure::new(Reason::ProfileFailed, detail);
        let request = Request::get(url, budget)
            .header(
                "Authorization",
                format!("Bearer {}", grant.access_token.expose()),
            )
            .header("Accept", "application/json");
        let (status, info) = super::call_json(&*self.client.http, request)
            .map_err(|e| failed(format!("GET {url}: {e}")))?;
        if status != 200 || !info.is_object() {
            return Err(failed(format!("GET {url} answered HTTP {status}")));
        }
        if info["sub"].as_str() != Some(subject) {
            return Err(failed(format!(
                "GET {url} answered for another subject than the id_token's"
            )));
        }
        Ok(email_of(&info))
    }

    fn hint_for(&self, error: &str) -> Option<String> {
        let hint = match error {
            "invalid_client" | "unauthorized_client" => format!(
                "the provider refused the client: check {} and {}",
                self.client_var, self.secret_var
            ),
            "redirect_uri_mismatch" => format!(
                "register {} as a redirect URI of the client, exactly",
                self.client.redirect_uri
            ),
            "invalid_grant" => {
                "the code was refused: expired, used already, or a PKCE verifier altered on the way"
                    .into()
            }
            "invalid_scope" => "a scope is not allowed for the client: check the scopes".into(),
            _ => return None,
        };
        Some(hint)
    }
}

/// The lower-cased `email`, and whether `email_verified` is exactly `true`.
fn email_of(claims: &Value) -> (Option<String>, bool) {
    let email = claims["email"]
        .as_str()
        .filter(|e| !e.is_empty())
        .map(str::to_lowercase);
    (email, claims["email_verified"] == Value::Bool(true))
}

impl Provider for Oidc {
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
        let scopes = match requested {
            None => self.scopes.clone(),
            Some(list) => allowed_subset(list, &self.allowed_scopes)?,
        };
        Ok(with_scopes(scopes, &["openid"]))
    }

    /// OpenID Connect Core 11: `offline_access` needs `prompt=consent` to be honoured.
    fn authorize_url(&self, r: &AuthorizeRequest) -> String {
        let offline = r.scopes.iter().any(|s| s == "offline_access");
        let extra: &[(&str, &str)] = if offline {
            &[("prompt", "consent")]
        } else {
            &[]
        };
        self.client.authorize_url(r, extra)
    }

    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInFailure> {
        check_issuer_parameter(
            iss,
            &self.metadata.issuer,
            self.metadata.iss_parameter_supported,
        )
    }

    fn identity(
        &self,
        grant: &Grant,
        nonce: &str,
        budget: Duration,
    ) -> Result<Identity, SignInFailure> {
        self.verified_identity(grant, nonce, budget)
            .map(|(identity, _)| identity)
    }

    /// A refresh token is what `offline_access` asks for.
    fn refresh_token_required(&self, scopes: &[String]) -> bool {
        scopes.iter().any(|s| s == "offline_access")
    }

    fn no_refresh_token_hint(&self) -> Option<String> {
        Some("offline_access was asked for but no refresh token came: allow it (or the refresh_token grant) for the client".into())
    }

    fn error_hint(&self, error: &str) -> Option<String> {
        self.hint_for(error)
    }

    fn describe(&self) -> Value {
        json!({
            "name": self.name,
            "kind": self.kind,
            "issuer": self.metadata.issuer,
            "redirect_uri": self.client.redirect_uri,
            "client_authentication": self.client.auth.method(),
            "iss_parameter": self.metadata.iss_parameter_supported,
            "scopes": self.scopes.join(" "),
        })
    }

    /// The discovery document (read at start-up only, but the keys come from what it names) and
    /// the signing keys every id_token is verified with.
    fn upstreams(&self) -> Vec<Upstream> {
        vec![
            Upstream {
                name: "discovery",
                url: discovery_url(&self.metadata.issuer),
                wanted: Wanted::Discovery(Some(self.metadata.issuer.clone())),
                setting: self.issuer_var.clone(),
            },
            Upstream {
                name: "keys",
                url: self.metadata.jwks_uri.clone(),
                wanted: Wanted::Keys,
                setting: format!("{} (the discovered jwks_uri)", self.issuer_var),
            },
        ]
    }
}

/// As `REFRESH_ROTATION` and `REFRESH_IDLE_DAYS` say (one-time, no idle limit, by default).
impl Refresher for Oidc {
    fn rotation(&self) -> Rotation {
        self.rotation
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
        self.idle_limit
    }
}

/// RFC 9207 section 2.4: when the provider promises `iss`, a response without it is refused;
/// when present, it must be the provider's issuer exactly.
pub fn check_issuer_parameter(
    iss: Option<&str>,
    issuer: &str,
    promised: bool,
) -> Result<(), SignInFailure> {
    match iss {
        Some(iss) if iss == issuer => Ok(()),
        Some(iss) => Err(SignInFailure::new(
            Reason::IssuerMismatch,
            format!("the authorization response's iss is {iss:?}, not {issuer:?}"),
        )),
        None if promised => Err(SignInFailure::new(
            Reason::IssuerMismatch,
            "the authorization response has no iss, which the provider promises (RFC 9207)",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{Response, TransportError, TransportFailure};
    use crate::provider::testing::{settings, Upstream};

    fn document(issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "authorization_endpoint": "https://idp.example/authorize",
            "token_endpoint": "https://idp.example/token",
            "jwks_uri": "https://idp.example/jwks",
            "userinfo_endpoint": "https://idp.example/userinfo",
            "code_challenge_methods_supported": ["plain", "S256"],
            "authorization_response_iss_parameter_supported": true,
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
        })
    }

    #[test]
    fn metadata_is_read_and_checked() {
        let m =
            parse_metadata(&document("https://idp.example"), "https://idp.example", "V").unwrap();
        assert_eq!(m.token_endpoint, "https://idp.example/token");
        assert!(m.iss_parameter_supported);
        assert_eq!(m.auth_methods, ["client_secret_post"]);
        assert_eq!(
            m.userinfo_endpoint.as_deref(),
            Some("https://idp.example/userinfo")
        );
        // The issuer must be equal exactly, trailing slash included.
        let e = parse_metadata(
            &document("https://idp.example/"),
            "https://idp.example",
            "V",
        )
        .unwrap_err();
        assert!(e.contains("V:") && e.contains("exactly"), "{e}");
        let mut d = document("https://idp.example");
        d["code_challenge_methods_supported"] = json!(["plain"]);
        assert!(parse_metadata(&d, "https://idp.example", "V")
            .unwrap_err()
            .contains("S256"));
        d.as_object_mut()
            .unwrap()
            .remove("code_challenge_methods_supported");
        assert!(parse_metadata(&d, "https://idp.example", "V").is_err());
        let mut d = document("https://idp.example");
        d["token_endpoint"] = json!("http://idp.example/token");
        let e = parse_metadata(&d, "https://idp.example", "V").unwrap_err();
        assert!(e.contains("token_endpoint"), "{e}");
        let mut d = document("https://idp.example");
        d.as_object_mut().unwrap().remove("jwks_uri");
        assert!(parse_metadata(&d, "https://idp.example", "V")
            .unwrap_err()
            .contains("jwks_uri"));
        let mut d = document("https://idp.example");
        d.as_object_mut()
            .unwrap()
            .remove("token_endpoint_auth_methods_supported");
        d.as_object_mut()
            .unwrap()
            .remove("authorization_response_iss_parameter_supported");
        let m = parse_metadata(&d, "https://idp.example", "V").unwrap();
        assert_eq!(m.auth_methods, ["client_secret_basic"], "the default");
        assert!(!m.iss_parameter_supported);
    }

    #[test]
    fn discovery_is_fetched_from_the_well_known_path() {
        let budget = Duration::from_secs(5);
        let empty = Upstream::answering(200, "{}");
        // The issuer's trailing slash is removed before the well-known path is added.
        let e = discover(&*empty.http, "https://idp.example/tenant/", "V", budget).unwrap_err();
        assert_eq!(
            empty.requests()[0].url,
            "https://idp.example/tenant/.well-known/openid-configuration"
        );
        assert_eq!(
            empty.requests()[0].header_value("accept"),
            Some("application/json")
        );
        assert!(e.contains("names the issuer \"\""), "{e}");
        let e = discover(
            &*Upstream::unreachable().http,
            "https://idp.example",
            "V",
            budget,
        )
        .unwrap_err();
        assert!(e.starts_with("V: OpenID Connect discovery at"), "{e}");
        let missing = Upstream::answering(404, "{}");
        assert!(discover(&*missing.http, "https://idp.example", "V", budget)
            .unwrap_err()
            .contains("HTTP 404"));
        let blank = Upstream::answering(200, "");
        assert!(discover(&*blank.http, "https://idp.example", "V", budget)
            .unwrap_err()
            .contains("without a JSON document"));
        let mut d = document("https://idp.example");
        d.as_object_mut().unwrap().remove("userinfo_endpoint");
        d["revocation_endpoint"] = json!("https://idp.example/revoke");
        let good = Upstream::answering(200, &d.to_string());
        let m = discover(&*good.http, "https://idp.example", "V", budget).unwrap();
        assert_eq!(m.jwks_uri, "https://idp.example/jwks");
        assert_eq!(m.userinfo_endpoint, None);
        assert_eq!(
            m.revocation_endpoint.as_deref(),
            Some("https://idp.example/revoke")
        );
    }

    /// An `oidc` provider discovered from `document`, its upstream answering everything else
    /// by `answer`.
    fn provider(
        mut s: ProviderSettings,
        document: Value,
        answer: impl Fn(&Request) -> Result<Response, TransportError> + Send + Sync + 'static,
    ) -> (Oidc, Upstream) {
        s.own.insert("ISSUER", "https://idp.example".into());
        check_settings(&mut s).unwrap();
        let body = document.to_string();
        let upstream = Upstream::new(move |r| {
            if r.url.ends_with("/.well-known/openid-configuration") {
                Ok(Response::new(200, body.clone()))
            } else {
                answer(r)
            }
        });
        let oidc = Oidc::new(
            &s,
            "oidc",
            &s.name,
            upstream.http.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        (oidc, upstream)
    }

    #[test]
    fn the_client_follows_discovery_and_the_settings() {
        let s = settings("corp", &KIND);
        let mut d = document("https://idp.example");
        d["revocation_endpoint"] = json!("http://idp.example/revoke");
        let (p, _) = provider(s, d, |_| Ok(Response::new(500, "")));
        assert_eq!(p.client.token_endpoint, "https://idp.example/token");
        assert!(
            matches!(p.client.auth, ClientAuth::None),
            "no secret: a public client"
        );
        assert!(
            matches!(p.client.revocation, Revocation::Unsupported),
            "a revocation endpoint that is not https is not used"
        );
        assert_eq!(p.rotation(), Rotation::OneTime, "the safe default");
        assert_eq!(p.idle_limit(), None);
        // Explicit endpoints win; the provider's only method for a secret is chosen.
        let mut s = settings("corp", &KIND);
        s.own
            .insert("TOKEN_URL", "https://proxy.example/token".into());
        s.own.insert("REFRESH_ROTATION", "reusable".into());
        s.own.insert("REFRESH_IDLE_DAYS", "30".into());
        s.client_secret = Some(Secret::new("s"));
        let (p, _) = provider(s, document("https://idp.example"), |_| {
            Ok(Response::new(500, ""))
        });
        assert_eq!(p.client.token_endpoint, "https://proxy.example/token");
        assert_eq!(p.client.auth.method(), "client_secret_post");
        assert_eq!(p.rotation(), Rotation::ReusableAfterRotation);
        assert_eq!(p.idle_limit(), Some(Duration::from_secs(30 * 24 * 3600)));
    }

    #[test]
    fn refresh_settings_must_be_known_values() {
        for (setting, value) in [
            ("REFRESH_ROTATION", "sometimes"),
            ("REFRESH_IDLE_DAYS", "0"),
            ("REFRESH_IDLE_DAYS", "ninety"),
            ("REFRESH_IDLE_DAYS", "3651"),
        ] {
            let mut s = settings("corp", &KIND);
            s.own.insert("ISSUER", "https://idp.example".into());
            s.own.insert(setting, value.into());
            let e = check_settings(&mut s).unwrap_err();
            assert!(
                e.contains(&format!("OAUTH_RELAY_PROVIDER_CORP_{setting}")),
                "{e}"
            );
        }
        let mut s = settings("corp", &KIND);
        assert!(check_settings(&mut s)
            .unwrap_err()
            .contains("OAUTH_RELAY_PROVIDER_CORP_ISSUER"));
    }

    #[test]
    fn authorize_urls_ask_for_consent_with_offline_access() {
        let (p, _) = provider(
            settings("corp", &KIND),
            document("https://idp.example"),
            |_| Ok(Response::new(500, "")),
        );
        let url = |scopes: &[String]| {
            p.authorize_url(&AuthorizeRequest {
                state: "st",
                code_challenge: "ch",
                nonce: "n-1",
                login_hint: Some("ana@example.com"),
                scopes,
                force_consent: false,
            })
        };
        let plain = url(&p.scopes(None).unwrap());
        assert!(
            plain.starts_with("https://idp.example/authorize?"),
            "{plain}"
        );
        assert!(plain.contains("nonce=n-1") && plain.contains("login_hint=ana%40example.com"));
        assert!(!plain.contains("prompt="), "{plain}");
        let offline = url(&["openid".to_string(), "offline_access".to_string()]);
        assert!(offline.ends_with("&prompt=consent"), "{offline}");
    }

    #[test]
    fn the_email_comes_from_userinfo_for_the_same_subject_only() {
        let grant = Grant {
            access_token: Secret::new("at"),
            refresh_token: None,
            id_token: None,
            token_type: "Bearer".into(),
            scope: String::new(),
            expiry: None,
        };
        let budget = Duration::from_secs(5);
        let (p, upstream) = provider(
            settings("corp", &KIND),
            document("https://idp.example"),
            |_| {
                Ok(Response::new(
                    200,
                    r#"{"sub":"u-1","email":"Ana@Example.com","email_verified":true}"#,
                ))
            },
        );
        assert_eq!(
            p.userinfo_email(&grant, "u-1", budget).unwrap(),
            (Some("ana@example.com".into()), true)
        );
        {
            let sent = upstream.requests();
            let r = sent.last().unwrap();
            assert_eq!(r.url, "https://idp.example/userinfo");
            assert_eq!(r.header_value("authorization"), Some("Bearer at"));
        }
        let f = p.userinfo_email(&grant, "u-2", budget).unwrap_err();
        assert_eq!(f.reason, Reason::ProfileFailed);
        assert!(f.detail.contains("another subject"), "{}", f.detail);
        let (down, _) = provider(
            settings("corp", &KIND),
            document("https://idp.example"),
            |_| {
                Err(TransportError::new(
                    TransportFailure::Connect,
                    "connection refused",
                ))
            },
        );
        let f = down.userinfo_email(&grant, "u-1", budget).unwrap_err();
        assert_eq!(
            f.detail,
            "GET https://idp.example/userinfo: connection refused"
        );
        let (missing, _) = provider(
            settings("corp", &KIND),
            document("https://idp.example"),
            |_| Ok(Response::new(401, "{}")),
        );
        assert_eq!(
            missing
                .userinfo_email(&grant, "u-1", budget)
                .unwrap_err()
                .detail,
            "GET https://idp.example/userinfo answered HTTP 401"
        );
    }

    #[test]
    fn a_refresh_goes_to_the_token_endpoint_and_a_revocation_to_the_revocation_endpoint() {
        let mut d = document("https://idp.example");
        d["revocation_endpoint"] = json!("https://idp.example/revoke");
        let (p, upstream) = provider(settings("corp", &KIND), d, |r| {
            Ok(match r.url.as_str() {
                "https://idp.example/token" => {
                    Response::new(200, r#"{"access_token":"at2","refresh_token":"rt2"}"#)
                }
                _ => Response::new(200, ""),
            })
        });
        let budget = Duration::from_secs(5);
        let outcome = p.refresh(&Secret::new("rt1"), &["openid".into()], budget);
        assert_eq!(outcome.kind(), "granted");
        p.revoke(None, Some(&Secret::new("rt2")), budget).unwrap();
        let sent = upstream.requests();
        let urls: Vec<&str> = sent.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(
            &urls[1..],
            ["https://idp.example/token", "https://idp.example/revoke"]
        );
        assert_eq!(
            sent[1].form_value("scope"),
            None,
            "the grant's scopes apply"
        );
    }

    #[test]
    fn the_iss_parameter_follows_rfc_9207() {
        let issuer = "https://idp.example";
        assert!(check_issuer_parameter(Some(issuer), issuer, true).is_ok());
        assert!(check_issuer_parameter(None, issuer, false).is_ok());
        assert!(check_issuer_parameter(Some(issuer), issuer, false).is_ok());
        for (iss, promised) in [
            (None, true),
            (Some("https://idp.example/"), true),
            (Some("https://evil.example"), false),
        ] {
            assert_eq!(
                check_issuer_parameter(iss, issuer, promised)
                    .unwrap_err()
                    .reason,
                Reason::IssuerMismatch,
                "{iss:?} {promised}"
            );
        }
    }

    #[test]
    fn only_a_boolean_true_verifies_an_email() {
        assert_eq!(
            email_of(&json!({"email": "Ana@Example.com", "email_verified": true})),
            (Some("ana@example.com".into()), true)
        );
        for verified in [json!(false), json!("true"), json!(1), Value::Null] {
            let claims = json!({"email": "ana@example.com", "email_verified": verified});
            assert!(!email_of(&claims).1, "{claims}");
        }
        assert_eq!(email_of(&json!({})), (None, false));
    }
}
