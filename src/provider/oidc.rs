//! Any OpenID Connect provider (kind `oidc`), and the core `google.rs` builds on. At start-up the
//! provider's metadata is read from `{issuer}/.well-known/openid-configuration` (OpenID Connect
//! Discovery 1.0, section 4): its `issuer` must equal the configured one exactly, its endpoints
//! must be https (http on loopback, for tests), and it must support PKCE with S256; anything
//! else stops start-up naming the variable. Sign-ins use PKCE S256 and a `nonce` per session;
//! the id_token is verified against the provider's JWKS (`jwks.rs`); the RFC 9207 `iss`
//! parameter is required when the provider promises it. An e-mail counts only when the
//! provider says `email_verified: true`; the subject is `sub`.

use super::jwks::{self, Expect, Keys};
use super::oauth::{self, ClientAuth};
use super::{
    allowed_subset, with_scopes, AuthorizeRequest, Grant, Identity, Provider, Upstream, Wanted,
};
use crate::broker_config::checked_url;
use crate::error::{Error, Reason, SignInFailure};
use crate::providers_config::{split_scopes, ProviderSettings};
use crate::secret::Secret;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_SCOPES: &str = "openid email";
/// The least time between two JWKS fetches (an unknown `kid` triggers one). Short, because
/// id_tokens reach us only from token endpoints, in sign-ins the broker started: an unknown
/// `kid` means the provider rotated its keys (it cannot be sent at will), and a person whose
/// sign-in lands just after a fetch must not fail for a longer wait. It still bounds a provider
/// that signs with a key it never publishes to one fetch a second.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(1);

/// Checks the settings of an `oidc` provider: an issuer is required.
pub fn check_settings(s: &mut ProviderSettings) -> Result<(), String> {
    if s.issuer.is_none() {
        return Err(format!(
            "{} is required for provider {} (kind oidc): the issuer's URL, as in its discovery \
             document",
            s.var("ISSUER"),
            s.name
        ));
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
    })
}

/// Discovery 4.1: the issuer with any terminating "/" removed, then the well-known path.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Fetches `{issuer}/.well-known/openid-configuration` within `budget`.
pub fn discover(issuer: &str, var: &str, budget: Duration) -> Result<Metadata, String> {
    let url = discovery_url(issuer);
    let response = crate::outbound::agent(budget)
        .get(&url)
        .header("Accept", "application/json")
        .call();
    let (status, document) = super::read_json(response)
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
    client_id: String,
    client_auth: ClientAuth,
    redirect_uri: String,
    metadata: Metadata,
    keys: Keys,
    scopes: Vec<String>,
    allowed_scopes: Vec<String>,
    client_var: String,
    secret_var: String,
    issuer_var: String,
}

impl Oidc {
    /// Discovers the provider and sets it up. `display_default` names it on pages when
    /// `DISPLAY_NAME` is unset.
    pub fn new(
        s: &ProviderSettings,
        kind: &'static str,
        display_default: &str,
        budget: Duration,
    ) -> Result<Oidc, String> {
        let issuer = s
            .issuer
            .as_deref()
            .ok_or(format!("{} is required", s.var("ISSUER")))?;
        let mut metadata = discover(issuer, &s.var("ISSUER"), budget)?;
        // Explicit endpoints win over discovered ones (a proxy, a private network path).
        if let Some(url) = &s.authorize_url {
            metadata.authorization_endpoint = url.clone();
        }
        if let Some(url) = &s.token_url {
            metadata.token_endpoint = url.clone();
        }
        let keys = Keys::new(
            metadata.jwks_uri.clone(),
            Arc::new(jwks::Https),
            JWKS_MIN_REFETCH,
        );
        Ok(Oidc {
            name: s.name.clone(),
            kind,
            display_name: s
                .display_name
                .clone()
                .unwrap_or_else(|| display_default.into()),
            client_id: s.client_id.clone(),
            client_auth: client_auth(s, &metadata)?,
            redirect_uri: s.redirect_uri.clone(),
            keys,
            scopes: s.scopes.clone(),
            allowed_scopes: with_scopes(s.allowed().to_vec(), &["openid"]),
            client_var: s.var("CLIENT_ID"),
            secret_var: s.var("CLIENT_SECRET"),
            issuer_var: s.var("ISSUER"),
            metadata,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.metadata.issuer
    }

    /// The authorization URL with `extra` parameters (Google's `access_type`, `hd`).
    pub fn authorize_url_with(&self, r: &AuthorizeRequest, extra: &[(&str, &str)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &r.scopes.join(" "))
            .append_pair("state", r.state)
            .append_pair("code_challenge", r.code_challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("nonce", r.nonce);
        if let Some(hint) = r.login_hint {
            query.append_pair("login_hint", hint);
        }
        let mut prompt_consent = r.force_consent;
        for (key, value) in extra {
            if *key == "prompt" && *value == "consent" {
                prompt_consent = true;
            } else {
                query.append_pair(key, value);
            }
        }
        if prompt_consent {
            query.append_pair("prompt", "consent");
        }
        let endpoint = &self.metadata.authorization_endpoint;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        format!("{endpoint}{separator}{}", query.finish())
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
                audience: &self.client_id,
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
        let response = crate::outbound::agent(budget)
            .get(url)
            .header(
                "Authorization",
                &format!("Bearer {}", grant.access_token.expose()),
            )
            .header("Accept", "application/json")
            .call();
        let (status, info) =
            super::read_json(response).map_err(|e| failed(format!("GET {url}: {e}")))?;
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
                self.redirect_uri
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

    fn redirect_uri(&self) -> &str {
        &self.redirect_uri
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
        self.authorize_url_with(r, extra)
    }

    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInFailure> {
        check_issuer_parameter(
            iss,
            &self.metadata.issuer,
            self.metadata.iss_parameter_supported,
        )
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
                token_url: &self.metadata.token_endpoint,
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
            "redirect_uri": self.redirect_uri,
            "client_authentication": self.client_auth.method(),
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
    use crate::provider::oauth::tests::{json_reply, serve_once};

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
        let (url, seen) = serve_once(&json_reply("200 OK", "{}"));
        // The issuer's trailing slash is removed before the well-known path is added.
        let e = discover(&format!("{url}/tenant/"), "V", Duration::from_secs(5)).unwrap_err();
        let request = seen.recv().unwrap();
        assert!(
            request.starts_with("GET /tenant/.well-known/openid-configuration HTTP/1.1"),
            "{request}"
        );
        assert!(e.contains("names the issuer \"\""), "{e}");
        let issuer_doc = |url: &str| {
            let mut d = document(url);
            for field in ["authorization_endpoint", "token_endpoint", "jwks_uri"] {
                d[field] = json!(format!("{url}/{field}"));
            }
            d.as_object_mut().unwrap().remove("userinfo_endpoint");
            d
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = discover(
            &format!("http://127.0.0.1:{port}"),
            "V",
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.starts_with("V: OpenID Connect discovery at"), "{e}");
        let (url, _seen) = serve_once(&json_reply("404 Not Found", "{}"));
        assert!(discover(&url, "V", Duration::from_secs(5))
            .unwrap_err()
            .contains("HTTP 404"));
        let (url, _seen) = serve_once("200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(discover(&url, "V", Duration::from_secs(5))
            .unwrap_err()
            .contains("without a JSON document"));
        // A good one (its own URL as the issuer: loopback http is allowed).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let body = issuer_doc(&url).to_string();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).unwrap();
            let reply = json_reply("200 OK", &body);
            stream
                .write_all(format!("HTTP/1.1 {reply}").as_bytes())
                .unwrap();
        });
        let m = discover(&url, "V", Duration::from_secs(5)).unwrap();
        assert_eq!(m.jwks_uri, format!("{url}/jwks_uri"));
        assert_eq!(m.userinfo_endpoint, None);
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
