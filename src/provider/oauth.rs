//! The OAuth 2.0 client every provider is, as data ([`Client`]: endpoints, client id, how the
//! client authenticates, redirect URI, the parameters a provider adds, how it revokes), and the
//! one implementation of each exchange with it:
//!
//! - the authorization URL (RFC 6749 4.1.1 with PKCE S256, RFC 7636; OpenID Connect's `nonce`,
//!   `login_hint` and `prompt` for OpenID providers);
//! - the code redemption (RFC 6749 4.1.3, with the PKCE verifier of RFC 7636 4.5): a form POST,
//!   `Accept: application/json`. It fails closed: anything but a 200 JSON object with a
//!   non-empty `access_token` and no `error` is a failure (GitHub answers errors with HTTP 200);
//! - the refresh (RFC 6749 6), its outcome classified for the connections core
//!   (`connections::classify`: whether the refresh token may have been used up);
//! - the revocation, as the provider offers it ([`Revocation`]).
//!
//! Every call goes through `outbound::Http` within one time budget, and redirects are never
//! followed.

use super::{AuthorizeRequest, Grant};
use crate::connections::classify::classify;
use crate::connections::refresher::RefreshOutcome;
use crate::error::{Reason, SignInFailure};
use crate::outbound::{Http, Request};
use crate::secret::Secret;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How the client proves who it is at the token endpoint (RFC 6749 2.3.1).
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// A public client: PKCE alone, `client_id` in the form.
    None,
    /// `client_secret` in the form body (`client_secret_post`).
    SecretPost(Secret),
    /// HTTP Basic with the form-encoded id and secret (`client_secret_basic`).
    SecretBasic(Secret),
}

impl ClientAuth {
    /// Whether a secret is sent at all (a confidential client).
    pub fn is_confidential(&self) -> bool {
        !matches!(self, ClientAuth::None)
    }

    /// The OpenID Connect name of the method, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::SecretBasic(_) => "client_secret_basic",
        }
    }

    fn secret(&self) -> Option<&Secret> {
        match self {
            ClientAuth::None => None,
            ClientAuth::SecretPost(s) | ClientAuth::SecretBasic(s) => Some(s),
        }
    }
}

/// How a provider lets a client end a grant; each provider says which it has.
#[derive(Clone, Debug)]
pub enum Revocation {
    /// None that the relay can use (Microsoft's identity platform has no revocation endpoint).
    Unsupported,
    /// RFC 7009 at this endpoint (advertised as `revocation_endpoint`; Google's): a form POST
    /// of `token` (the refresh token when there is one: revoking it ends the grant) and
    /// `token_type_hint`, the client authenticated as at the token endpoint.
    Rfc7009(String),
    /// A DELETE of this URL with the client id and secret as HTTP Basic and the access token
    /// in a JSON body `{"access_token": ...}`: GitHub's "delete an app authorization"
    /// (`DELETE {api}/applications/{client_id}/grant`), which ends the grant and every token
    /// of it. `headers` go along (GitHub's API wants its own).
    GrantDeletion {
        url: String,
        headers: Vec<(&'static str, String)>,
    },
}

/// Why a revocation did not happen. Never holds a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeError {
    /// The provider offers no revocation.
    Unsupported,
    /// There was no token of the kind the provider revokes with.
    NoToken,
    /// The call failed or was refused: what happened, for the log.
    Failed(String),
}

/// The most of a token response we read; real ones are a few KiB.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// An OAuth 2.0 client of one provider, as data.
pub struct Client {
    pub client_id: String,
    pub auth: ClientAuth,
    /// Where the provider sends the browser back to, exactly as registered with it.
    pub redirect_uri: String,
    pub authorize_endpoint: String,
    pub token_endpoint: String,
    /// Whether the provider speaks OpenID Connect: then sign-ins carry a `nonce`, the expected
    /// e-mail as `login_hint`, and `prompt=consent` when consent is forced. Plain OAuth 2.0
    /// providers (GitHub) get none of them.
    pub openid: bool,
    /// Parameters every authorization URL carries (Microsoft's `response_mode=query`,
    /// Google's `access_type=offline`); a `prompt=consent` among them is sent once.
    pub authorize_params: Vec<(String, String)>,
    /// Form fields every token request (redemption, refresh) carries.
    pub token_params: Vec<(String, String)>,
    /// Whether token requests repeat the scopes as `scope` (Microsoft's v2.0 endpoint wants
    /// them at redemption and refresh).
    pub scope_in_token_requests: bool,
    pub revocation: Revocation,
    pub http: Arc<dyn Http>,
}

impl Client {
    /// A client with no extra parameters, no revocation, and the OpenID parameters.
    pub fn new(
        client_id: &str,
        auth: ClientAuth,
        redirect_uri: &str,
        authorize_endpoint: &str,
        token_endpoint: &str,
        http: Arc<dyn Http>,
    ) -> Client {
        Client {
            client_id: client_id.to_string(),
            auth,
            redirect_uri: redirect_uri.to_string(),
            authorize_endpoint: authorize_endpoint.to_string(),
            token_endpoint: token_endpoint.to_string(),
            openid: true,
            authorize_params: Vec::new(),
            token_params: Vec::new(),
            scope_in_token_requests: false,
            revocation: Revocation::Unsupported,
            http,
        }
    }

    /// The authorization URL for one sign-in, with `extra` parameters of this request besides
    /// the client's own (OpenID Connect's `prompt=consent` for `offline_access`).
    pub fn authorize_url(&self, r: &AuthorizeRequest, extra: &[(&str, &str)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("client_id", &self.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &r.scopes.join(" "))
            .append_pair("state", r.state)
            .append_pair("code_challenge", r.code_challenge)
            .append_pair("code_challenge_method", "S256");
        let mut prompt_consent = r.force_consent;
        if self.openid {
            query.append_pair("nonce", r.nonce);
            if let Some(hint) = r.login_hint {
                query.append_pair("login_hint", hint);
            }
        }
        let params = self
            .authorize_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.iter().copied());
        for (key, value) in params {
            if key == "prompt" && value == "consent" {
                prompt_consent = true;
            } else {
                query.append_pair(key, value);
            }
        }
        if prompt_consent && self.openid {
            query.append_pair("prompt", "consent");
        }
        let endpoint = &self.authorize_endpoint;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        format!("{endpoint}{separator}{}", query.finish())
    }

    /// A POST to the token endpoint of `form`, then the client's own fields and
    /// authentication.
    fn token_request<'a>(
        &'a self,
        mut form: Vec<(&'a str, &'a str)>,
        scopes: &'a str,
        budget: Duration,
    ) -> Request {
        form.push(("client_id", &self.client_id));
        if self.scope_in_token_requests {
            form.push(("scope", scopes));
        }
        form.extend(
            self.token_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        if let ClientAuth::SecretPost(secret) = &self.auth {
            form.push(("client_secret", secret.expose()));
        }
        let request = Request::post_form(&self.token_endpoint, &form, budget)
            .header("Accept", "application/json")
            .limit(MAX_RESPONSE_BYTES);
        match &self.auth {
            ClientAuth::SecretBasic(secret) => request.header(
                "Authorization",
                basic_authorization(&self.client_id, secret).expose(),
            ),
            _ => request,
        }
    }

    /// Redeems the code within `budget`. `hint` turns a provider's error description into what
    /// the operator should fix (for the audit log).
    pub fn exchange(
        &self,
        code: &Secret,
        verifier: &Secret,
        scopes: &[String],
        budget: Duration,
        hint: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Grant, SignInFailure> {
        let scope = scopes.join(" ");
        let form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", verifier.expose()),
        ];
        let request = self.token_request(form, &scope, budget);
        let sent = SystemTime::now();
        let failed = |detail: String| SignInFailure::new(Reason::ExchangeFailed, detail);
        let response = self.http.call(request).map_err(|e| match e.status {
            Some(_) => failed(format!("reading the token response: {e}")),
            None => failed(format!("POST {}: {e}", self.token_endpoint)).with_hint(Some(
                "the token endpoint did not answer in time or at all: check its URL and the egress",
            )),
        })?;
        let status = response.status;
        let body = response.json();
        if let Some(error) = body["error"].as_str().filter(|e| !e.is_empty()) {
            let description = body["error_description"].as_str().unwrap_or("");
            return Err(failed(format!(
                "HTTP {status} {error}: {}",
                description.lines().next().unwrap_or("")
            ))
            .with_hint(hint(description).or_else(|| hint(error))));
        }
        if status != 200 {
            return Err(failed(format!("the token endpoint answered HTTP {status}")));
        }
        if !body.is_object() {
            return Err(failed(
                "the token endpoint answered 200 without a JSON object".into(),
            ));
        }
        Grant::from_token_answer(&body, sent)
            .ok_or_else(|| failed("the token response has no access_token".into()))
    }

    /// Presents `refresh_token` once within `budget` and says what came of it, in the
    /// connections core's terms (new tokens, a dead grant, a refusal that left the token
    /// unused, nothing sent, or unknown).
    pub fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> RefreshOutcome {
        let scope = scopes.join(" ");
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ];
        let request = self.token_request(form, &scope, budget);
        let sent = SystemTime::now();
        match self.http.call(request) {
            Ok(response) => classify(
                Ok((
                    response.status,
                    std::str::from_utf8(&response.body).unwrap_or(""),
                )),
                sent,
            ),
            Err(e) => classify(Err(e.failure), sent),
        }
    }

    /// Ends the grant as the provider allows, with the refresh token where RFC 7009 is
    /// offered (the access token when there is none), or the access token for a grant
    /// deletion.
    pub fn revoke(
        &self,
        access_token: Option<&Secret>,
        refresh_token: Option<&Secret>,
        budget: Duration,
    ) -> Result<(), RevokeError> {
        let request = match &self.revocation {
            Revocation::Unsupported => return Err(RevokeError::Unsupported),
            Revocation::Rfc7009(endpoint) => {
                let (token, hint) = match (refresh_token, access_token) {
                    (Some(t), _) => (t, "refresh_token"),
                    (None, Some(t)) => (t, "access_token"),
                    (None, None) => return Err(RevokeError::NoToken),
                };
                let mut form = vec![("token", token.expose()), ("token_type_hint", hint)];
                if !self.auth.is_confidential() {
                    form.push(("client_id", &self.client_id));
                }
                if let ClientAuth::SecretPost(secret) = &self.auth {
                    form.push(("client_id", &self.client_id));
                    form.push(("client_secret", secret.expose()));
                }
                let request = Request::post_form(endpoint, &form, budget);
                match &self.auth {
                    ClientAuth::SecretBasic(secret) => request.header(
                        "Authorization",
                        basic_authorization(&self.client_id, secret).expose(),
                    ),
                    _ => request,
                }
            }
            Revocation::GrantDeletion { url, headers } => {
                let token = access_token.ok_or(RevokeError::NoToken)?;
                let secret = self.auth.secret().ok_or(RevokeError::Unsupported)?;
                let mut request = Request::new("DELETE", url, budget)
                    .json(&json!({ "access_token": token.expose() }))
                    .header(
                        "Authorization",
                        basic_authorization(&self.client_id, secret).expose(),
                    );
                for (name, value) in headers {
                    request = request.header(name, value.clone());
                }
                request
            }
        };
        let url = request.url.clone();
        let response = self
            .http
            .call(request)
            .map_err(|e| RevokeError::Failed(format!("{url}: {e}")))?;
        if (200..300).contains(&response.status) {
            return Ok(());
        }
        let body: Value = response.json();
        let error = body["error"]
            .as_str()
            .or(body["message"].as_str())
            .unwrap_or("");
        Err(RevokeError::Failed(format!(
            "{url} answered HTTP {} {}",
            response.status,
            error.lines().next().unwrap_or("")
        )))
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`: RFC 6749 2.3.1 form-encodes both first.
fn basic_authorization(client_id: &str, secret: &Secret) -> Secret {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret.expose()));
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::classify::TransportFailure;
    use crate::outbound::{Response, TransportError};
    use crate::provider::testing::Upstream;

    fn client(upstream: &Upstream, auth: ClientAuth) -> Client {
        Client {
            scope_in_token_requests: true,
            ..Client::new(
                "client id",
                auth,
                "https://relay.example/login/x/callback",
                "https://idp.example/authorize",
                "https://idp.example/token",
                upstream.http.clone(),
            )
        }
    }

    fn redeem(upstream: &Upstream, auth: ClientAuth) -> Result<Grant, SignInFailure> {
        let (code, verifier) = (Secret::new("the-code"), Secret::new("the-verifier"));
        client(upstream, auth).exchange(
            &code,
            &verifier,
            &["openid".into(), "email".into()],
            Duration::from_secs(10),
            &|d| {
                d.contains("bad_verification_code")
                    .then(|| "get a new code".into())
            },
        )
    }

    fn request() -> AuthorizeRequest<'static> {
        AuthorizeRequest {
            state: "st",
            code_challenge: "ch",
            nonce: "n",
            login_hint: Some("ana@example.com"),
            scopes: &[],
            force_consent: false,
        }
    }

    fn query(url: &str) -> Vec<(String, String)> {
        let q = url.split_once('?').unwrap().1;
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn a_code_is_redeemed_with_the_verifier_and_the_secret_in_the_form() {
        let upstream = Upstream::answering(
            200,
            r#"{"access_token":"at","refresh_token":"rt","id_token":"it","token_type":"Bearer","scope":"openid","expires_in":"120"}"#,
        );
        let grant = redeem(&upstream, ClientAuth::SecretPost(Secret::new("s3cret"))).unwrap();
        assert_eq!(grant.access_token.expose(), "at");
        assert_eq!(grant.refresh_token.unwrap().expose(), "rt");
        assert_eq!(grant.id_token.unwrap().expose(), "it");
        assert!(grant.expiry.is_some());
        let sent = upstream.requests();
        let r = &sent[0];
        assert_eq!(
            (r.method, r.url.as_str()),
            ("POST", "https://idp.example/token")
        );
        assert_eq!(r.header_value("accept"), Some("application/json"));
        assert!(r.header_value("authorization").is_none());
        assert_eq!(
            r.form_value("grant_type").as_deref(),
            Some("authorization_code")
        );
        assert_eq!(r.form_value("code").as_deref(), Some("the-code"));
        assert_eq!(
            r.form_value("code_verifier").as_deref(),
            Some("the-verifier")
        );
        assert_eq!(r.form_value("client_id").as_deref(), Some("client id"));
        assert_eq!(r.form_value("client_secret").as_deref(), Some("s3cret"));
        assert_eq!(r.form_value("scope").as_deref(), Some("openid email"));
        assert_eq!(
            r.form_value("redirect_uri").as_deref(),
            Some("https://relay.example/login/x/callback")
        );
    }

    #[test]
    fn basic_authentication_form_encodes_id_and_secret() {
        let upstream = Upstream::answering(200, r#"{"access_token":"at"}"#);
        let grant = redeem(&upstream, ClientAuth::SecretBasic(Secret::new("a:b+c"))).unwrap();
        assert_eq!(grant.token_type, "Bearer");
        assert!(grant.expiry.is_none(), "no expires_in: does not expire");
        let expected = base64::engine::general_purpose::STANDARD.encode("client+id:a%3Ab%2Bc");
        let sent = upstream.requests();
        assert_eq!(
            sent[0].header_value("authorization"),
            Some(format!("Basic {expected}").as_str())
        );
        assert!(sent[0].form_value("client_secret").is_none());
    }

    #[test]
    fn a_public_client_sends_no_secret() {
        let upstream = Upstream::answering(200, r#"{"access_token":"at"}"#);
        redeem(&upstream, ClientAuth::None).unwrap();
        let sent = upstream.requests();
        assert!(sent[0].header_value("authorization").is_none());
        assert!(sent[0].form_value("client_secret").is_none());
        assert_eq!(
            sent[0].form_value("client_id").as_deref(),
            Some("client id")
        );
    }

    #[test]
    fn an_error_with_http_200_fails() {
        // GitHub's way: HTTP 200 and an error object.
        let upstream = Upstream::answering(
            200,
            r#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired.","error_uri":"https://docs.github.com/"}"#,
        );
        let f = redeem(&upstream, ClientAuth::None).unwrap_err();
        assert_eq!(f.reason, Reason::ExchangeFailed);
        assert!(f.detail.contains("bad_verification_code"), "{}", f.detail);
        assert_eq!(f.hint.as_deref(), Some("get a new code"));
    }

    #[test]
    fn error_statuses_fail_with_the_provider_words_in_the_detail_only() {
        let upstream = Upstream::answering(
            400,
            r#"{"error":"invalid_grant","error_description":"Bad Request\nmore"}"#,
        );
        let f = redeem(&upstream, ClientAuth::None).unwrap_err();
        assert_eq!(f.detail, "HTTP 400 invalid_grant: Bad Request");
        let f = redeem(&Upstream::answering(503, ""), ClientAuth::None).unwrap_err();
        assert_eq!(f.detail, "the token endpoint answered HTTP 503");
        // A redirect is an answer, never followed.
        let f = redeem(&Upstream::answering(302, ""), ClientAuth::None).unwrap_err();
        assert_eq!(f.detail, "the token endpoint answered HTTP 302");
    }

    #[test]
    fn non_json_or_no_access_token_fails_closed() {
        for body in [
            "access_token=gho_x&scope=&token_type=bearer",
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":""}"#,
            r#"["access_token"]"#,
        ] {
            let f = redeem(&Upstream::answering(200, body), ClientAuth::None).unwrap_err();
            assert_eq!(f.reason, Reason::ExchangeFailed, "{body}");
        }
    }

    #[test]
    fn an_unreachable_endpoint_fails_with_a_hint() {
        let f = redeem(&Upstream::unreachable(), ClientAuth::None).unwrap_err();
        assert_eq!(f.reason, Reason::ExchangeFailed);
        assert!(
            f.detail.starts_with("POST https://idp.example/token: "),
            "{}",
            f.detail
        );
        assert!(f.hint.unwrap().contains("egress"));
        // An answer whose body could not be read: no hint about reaching it.
        let cut = Upstream::new(|_| {
            Err(TransportError {
                status: Some(200),
                ..TransportError::new(TransportFailure::AfterSending, "connection reset")
            })
        });
        let f = redeem(&cut, ClientAuth::None).unwrap_err();
        assert_eq!(f.detail, "reading the token response: connection reset");
        assert!(f.hint.is_none());
    }

    #[test]
    fn the_authorize_url_carries_pkce_and_openid_parameters_for_openid_providers() {
        let upstream = Upstream::unreachable();
        let mut c = client(&upstream, ClientAuth::None);
        c.authorize_params = vec![
            ("access_type".into(), "offline".into()),
            ("prompt".into(), "consent".into()),
        ];
        let scopes = ["openid".to_string(), "email".to_string()];
        let r = AuthorizeRequest {
            scopes: &scopes,
            force_consent: true,
            ..request()
        };
        let url = c.authorize_url(&r, &[("hd", "example.com")]);
        assert!(
            url.starts_with("https://idp.example/authorize?client_id=client+id&"),
            "{url}"
        );
        let q = query(&url);
        let keys: Vec<&str> = q.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "client_id",
                "response_type",
                "redirect_uri",
                "scope",
                "state",
                "code_challenge",
                "code_challenge_method",
                "nonce",
                "login_hint",
                "access_type",
                "hd",
                "prompt"
            ],
            "prompt=consent once, whoever asks for it"
        );
        assert!(q.contains(&("scope".into(), "openid email".into())));
        assert!(q.contains(&("code_challenge_method".into(), "S256".into())));
        assert!(q.contains(&("login_hint".into(), "ana@example.com".into())));
        // An endpoint that has a query already gets the parameters after `&`.
        c.authorize_endpoint = "https://idp.example/authorize?tenant=x".into();
        assert!(c
            .authorize_url(&request(), &[])
            .starts_with("https://idp.example/authorize?tenant=x&client_id="));
    }

    #[test]
    fn a_plain_oauth_provider_gets_no_openid_parameters() {
        let upstream = Upstream::unreachable();
        let c = Client {
            openid: false,
            ..client(&upstream, ClientAuth::None)
        };
        let r = AuthorizeRequest {
            force_consent: true,
            ..request()
        };
        let q = query(&c.authorize_url(&r, &[]));
        for absent in ["nonce", "login_hint", "prompt"] {
            assert!(!q.iter().any(|(k, _)| k == absent), "{absent}: {q:?}");
        }
    }

    #[test]
    fn a_refresh_presents_the_token_once_and_classifies_each_outcome() {
        let rt = Secret::new("rt-1");
        let scopes = ["openid".to_string(), "Mail.Read".to_string()];
        let budget = Duration::from_secs(5);
        let outcome = |upstream: &Upstream| {
            client(upstream, ClientAuth::SecretPost(Secret::new("s")))
                .refresh(&rt, &scopes, budget)
                .kind()
        };
        let granted = Upstream::answering(200, r#"{"access_token":"at2","refresh_token":"rt-2"}"#);
        let c = client(&granted, ClientAuth::SecretPost(Secret::new("s")));
        let RefreshOutcome::Granted(g) = c.refresh(&rt, &scopes, budget) else {
            panic!("not granted")
        };
        assert_eq!(g.refresh_token.unwrap().expose(), "rt-2");
        {
            let sent = granted.requests();
            assert_eq!(sent.len(), 1, "presented once");
            let r = &sent[0];
            assert_eq!(r.form_value("grant_type").as_deref(), Some("refresh_token"));
            assert_eq!(r.form_value("refresh_token").as_deref(), Some("rt-1"));
            assert_eq!(r.form_value("scope").as_deref(), Some("openid Mail.Read"));
            assert_eq!(r.form_value("client_secret").as_deref(), Some("s"));
            assert_eq!(r.header_value("accept"), Some("application/json"));
        }
        assert_eq!(
            outcome(&Upstream::answering(400, r#"{"error":"invalid_grant"}"#)),
            "invalid_grant"
        );
        // GitHub's dead refresh token comes with HTTP 200.
        assert_eq!(
            outcome(&Upstream::answering(
                200,
                r#"{"error":"bad_refresh_token"}"#
            )),
            "invalid_grant"
        );
        assert_eq!(
            outcome(&Upstream::answering(401, r#"{"error":"invalid_client"}"#)),
            "refused"
        );
        assert_eq!(outcome(&Upstream::unreachable()), "not_sent");
        let reset = Upstream::new(|_| {
            Err(TransportError::new(
                TransportFailure::AfterSending,
                "connection reset",
            ))
        });
        assert_eq!(outcome(&reset), "ambiguous");
        assert_eq!(
            outcome(&Upstream::answering(502, "bad gateway")),
            "ambiguous"
        );
        assert_eq!(
            outcome(&Upstream::answering(200, "\u{0}\u{ff}")),
            "ambiguous"
        );
    }

    #[test]
    fn rfc_7009_revokes_the_refresh_token_authenticated_as_at_the_token_endpoint() {
        let upstream = Upstream::answering(200, "");
        let mut c = client(&upstream, ClientAuth::SecretBasic(Secret::new("s")));
        c.revocation = Revocation::Rfc7009("https://idp.example/revoke".into());
        let (at, rt) = (Secret::new("at"), Secret::new("rt"));
        let budget = Duration::from_secs(5);
        c.revoke(Some(&at), Some(&rt), budget).unwrap();
        c.revoke(Some(&at), None, budget).unwrap();
        assert_eq!(c.revoke(None, None, budget), Err(RevokeError::NoToken));
        {
            let sent = upstream.requests();
            assert_eq!(sent[0].url, "https://idp.example/revoke");
            assert_eq!(sent[0].form_value("token").as_deref(), Some("rt"));
            assert_eq!(
                sent[0].form_value("token_type_hint").as_deref(),
                Some("refresh_token")
            );
            assert!(sent[0]
                .header_value("authorization")
                .unwrap()
                .starts_with("Basic "));
            assert_eq!(sent[1].form_value("token").as_deref(), Some("at"));
        }
        let refused = Upstream::answering(400, r#"{"error":"unsupported_token_type"}"#);
        let mut c = client(&refused, ClientAuth::None);
        c.revocation = Revocation::Rfc7009("https://idp.example/revoke".into());
        let distinct = Secret::new("rt-9f8e7d");
        match c.revoke(None, Some(&distinct), budget) {
            Err(RevokeError::Failed(detail)) => {
                assert!(
                    detail.contains("HTTP 400 unsupported_token_type"),
                    "{detail}"
                );
                assert!(!detail.contains("9f8e7d"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refused.requests()[0].form_value("client_id").as_deref(),
            Some("client id")
        );
        let c = client(&refused, ClientAuth::None);
        assert_eq!(
            c.revoke(None, Some(&rt), budget),
            Err(RevokeError::Unsupported)
        );
    }

    #[test]
    fn a_grant_deletion_sends_the_access_token_with_basic_authentication() {
        let upstream = Upstream::new(|_| Ok(Response::new(204, "")));
        let mut c = client(&upstream, ClientAuth::SecretPost(Secret::new("s")));
        c.revocation = Revocation::GrantDeletion {
            url: "https://api.example/applications/client%20id/grant".into(),
            headers: vec![("X-Api-Version", "1".into())],
        };
        let budget = Duration::from_secs(5);
        assert_eq!(
            c.revoke(None, Some(&Secret::new("rt")), budget),
            Err(RevokeError::NoToken)
        );
        c.revoke(Some(&Secret::new("gho_at")), None, budget)
            .unwrap();
        let sent = upstream.requests();
        let r = &sent[0];
        assert_eq!(r.method, "DELETE");
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap(),
            json!({"access_token": "gho_at"})
        );
        let expected = base64::engine::general_purpose::STANDARD.encode("client+id:s");
        assert_eq!(
            r.header_value("authorization"),
            Some(format!("Basic {expected}").as_str())
        );
        assert_eq!(r.header_value("x-api-version"), Some("1"));
    }
}
