//! Microsoft identity platform (v2.0 endpoints) and Microsoft Graph `/me`. Base URLs are
//! configurable for national clouds and tests.

use super::oauth::{self, ClientAuth};
use super::{AuthorizeRequest, Grant, Identity, Provider};
use crate::broker_config::BrokerConfig;
use crate::error::{Reason, SignInFailure};
use crate::secret::Secret;
use base64::Engine;
use serde_json::Value;
use std::time::Duration;

pub struct Microsoft {
    client_id: String,
    /// A confidential ("Web") registration sends its secret in the form, as Microsoft documents.
    client_auth: ClientAuth,
    tenant: String,
    login_base: String,
    graph_base: String,
    redirect_uri: String,
}

impl Microsoft {
    pub fn new(c: &BrokerConfig) -> Self {
        Microsoft {
            client_id: c.client_id.clone(),
            client_auth: match &c.client_secret {
                Some(secret) => ClientAuth::SecretPost(secret.clone()),
                None => ClientAuth::None,
            },
            tenant: c.tenant.clone(),
            login_base: c.login_base_url.clone(),
            graph_base: c.graph_base_url.clone(),
            redirect_uri: c.redirect_uri.clone(),
        }
    }

    fn endpoint(&self, name: &str) -> String {
        format!("{}/{}/oauth2/v2.0/{name}", self.login_base, self.tenant)
    }
}

impl Provider for Microsoft {
    fn authorize_url(&self, r: &AuthorizeRequest) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("client_id", &self.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("response_mode", "query")
            .append_pair("scope", &r.scopes.join(" "))
            .append_pair("state", r.state)
            .append_pair("code_challenge", r.code_challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("login_hint", r.login_hint);
        if r.force_consent {
            query.append_pair("prompt", "consent");
        }
        format!("{}?{}", self.endpoint("authorize"), query.finish())
    }

    fn exchange(
        &self,
        code: &str,
        verifier: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> Result<Grant, SignInFailure> {
        let scope = scopes.join(" ");
        oauth::redeem(
            &oauth::Redemption {
                token_url: &self.endpoint("token"),
                client_id: &self.client_id,
                auth: &self.client_auth,
                redirect_uri: &self.redirect_uri,
                code: &Secret::new(code),
                verifier,
                // Microsoft's v2.0 endpoint wants the scopes again at redemption.
                extra: &[("scope", &scope)],
            },
            budget,
            &|description| hint_for(description).map(String::from),
        )
    }

    fn error_hint(&self, description: &str) -> Option<String> {
        hint_for(description).map(String::from)
    }

    fn identity(&self, grant: &Grant, budget: Duration) -> Result<Identity, SignInFailure> {
        let response = crate::outbound::agent(budget)
            .get(&format!("{}/v1.0/me", self.graph_base))
            .header(
                "Authorization",
                &format!("Bearer {}", grant.access_token.expose()),
            )
            .header("Accept", "application/json")
            .call();
        let (status, me) = read(response).map_err(|detail| {
            SignInFailure::new(Reason::GraphFailed, detail).with_hint(Some(
                "Microsoft Graph did not answer in time; check WK_M365_GRAPH_BASE_URL and egress",
            ))
        })?;
        if status != 200 {
            return Err(SignInFailure::new(
                Reason::GraphFailed,
                format!(
                    "GET /v1.0/me answered HTTP {status} {}",
                    me["error"]["code"].as_str().unwrap_or("")
                ),
            )
            .with_hint(
                (status == 401 || status == 403)
                    .then_some("grant the User.Read delegated permission to the app registration"),
            ));
        }
        let email = me["mail"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| me["userPrincipalName"].as_str())
            .unwrap_or_default()
            .to_lowercase();
        let tenant = grant
            .id_token
            .as_ref()
            .and_then(|t| jwt_claims(t.expose()))
            .and_then(|c| c["tid"].as_str().map(str::to_lowercase));
        Ok(Identity { email, tenant })
    }
}

fn read(response: Result<http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, Value), String> {
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

/// The claims of a JWT, without verifying its signature. Only used on an id_token received
/// directly from the token endpoint over TLS, which OpenID Connect Core 3.1.3.7 allows.
pub fn jwt_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What to fix in the app registration for Microsoft errors operators meet in practice.
pub fn hint_for(description: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        ("AADSTS7000218", "the app registration is a confidential (Web) client: set WK_M365_CLIENT_SECRET, or add the redirect URI under 'Mobile and desktop applications' to use a public client"),
        ("AADSTS7000215", "WK_M365_CLIENT_SECRET is wrong or expired: create a new client secret in the app registration"),
        ("AADSTS7000222", "the client secret has expired: create a new one in the app registration"),
        ("AADSTS50011", "the redirect URI is not registered: add WK_PUBLIC_BASE_URL/m365/callback to the app registration exactly"),
        ("AADSTS500112", "the redirect URI differs from the one used at sign-in: check WK_PUBLIC_BASE_URL"),
        ("AADSTS700016", "the application was not found in the tenant: check WK_M365_CLIENT_ID and WK_M365_TENANT_ID"),
        ("AADSTS90002", "the tenant was not found: check WK_M365_TENANT_ID"),
        ("AADSTS65001", "consent is required: grant admin consent for the scopes, or create the session with force_consent"),
        ("AADSTS65004", "the person declined consent"),
        ("AADSTS501481", "the PKCE verifier did not match: a proxy may have altered the request"),
        ("AADSTS70000", "the authorization code was invalid or already used"),
        ("AADSTS54005", "the authorization code was already redeemed"),
        ("AADSTS9002313", "the token request was malformed"),
        ("AADSTS50020", "the account is from a tenant the app does not accept: check the supported account types or WK_M365_TENANT_ID"),
    ];
    HINTS
        .iter()
        .find(|(code, _)| description.contains(code))
        .map(|(_, hint)| *hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_read_from_the_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"tid":"ABC"}"#);
        assert_eq!(jwt_claims(&format!("h.{payload}.s")).unwrap()["tid"], "ABC");
        assert!(jwt_claims("garbage").is_none());
    }

    #[test]
    fn known_errors_get_a_hint() {
        assert!(hint_for("AADSTS7000218: The request body must contain")
            .unwrap()
            .contains("WK_M365_CLIENT_SECRET"));
        assert!(hint_for("AADSTS50011: redirect")
            .unwrap()
            .contains("redirect URI"));
        assert!(hint_for("something new").is_none());
    }
}
