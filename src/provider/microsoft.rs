//! Microsoft identity platform (v2.0 endpoints) and Microsoft Graph `/me`, read-only. Base URLs
//! are configurable for national clouds and tests. Microsoft's quirks live here: only read-only
//! Graph scopes, `scope` repeated at redemption, `mail` else `userPrincipalName` from Graph, and
//! AADSTS error hints.
//!
//! Who signed in: the subject is `{tid}/{oid}` (the tenant's GUID and the account's object id
//! in it: an `oid` is unique only within its tenant, and the pair never changes, unlike `mail`
//! or the UPN). A pinned tenant (a GUID, or a domain such as `contoso.onmicrosoft.com`, which
//! is resolved to its GUID through the tenant's OpenID configuration) must be the id_token's
//! `tid`, and its directory vouches for the e-mail (Graph's `mail`, else the UPN). With
//! `organizations`, `common` or `consumers` any tenant's admin can set any `mail`, so the only
//! verified address is the one the id_token's `xms_edov` claim (an optional claim: "the
//! e-mail's domain owner is verified") speaks of: the id_token's own `email` claim, which the
//! `email` scope (asked for without a pinned tenant) brings. A different Graph `mail` is then only
//! an unverified address of the account (`Identity::unverified_email`).
//!
//! The id_token comes straight from the token endpoint over TLS, so its claims are read
//! without checking its signature (OpenID Connect Core 3.1.3.7, item 6).

use super::oauth::{self, ClientAuth};
use super::{with_scopes, AuthorizeRequest, Grant, Identity, Provider, Upstream, Wanted};
use crate::error::{Error, Reason, SignInFailure};
use crate::providers_config::ProviderSettings;
use crate::secret::Secret;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::Duration;

pub const DEFAULT_SCOPES: &str = "offline_access User.Read Mail.Read Calendars.Read";
pub const DEFAULT_LOGIN_BASE: &str = "https://login.microsoftonline.com";
pub const DEFAULT_GRAPH_BASE: &str = "https://graph.microsoft.com";
pub const DEFAULT_TENANT: &str = "organizations";
const DISPLAY_NAME: &str = "Microsoft 365";

/// Applies Microsoft's rules to the settings: a tenant of the right form, read-only scopes
/// including `offline_access` (the broker hands out a refresh token), and the defaults.
pub fn check_settings(s: &mut ProviderSettings) -> Result<(), String> {
    let tenant = s.tenant.get_or_insert_with(|| DEFAULT_TENANT.into());
    if tenant.is_empty()
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    {
        return Err(format!(
            "{} must be a tenant id, a domain or `organizations`",
            s.var("TENANT")
        ));
    }
    if s.scopes.is_empty() {
        s.scopes = crate::providers_config::split_scopes(DEFAULT_SCOPES);
    }
    s.scopes =
        read_only_scopes(&s.scopes.join(" ")).map_err(|e| format!("{}: {e}", s.var("SCOPES")))?;
    if !s.scopes.iter().any(|x| x == "offline_access") {
        return Err(format!(
            "{} must include offline_access (the broker hands out a refresh token)",
            s.var("SCOPES")
        ));
    }
    if let Some(allowed) = &s.allowed_scopes {
        read_only_scopes(&allowed.join(" "))
            .map_err(|e| format!("{}: {e}", s.var("ALLOWED_SCOPES")))?;
    }
    s.login_url.get_or_insert_with(|| DEFAULT_LOGIN_BASE.into());
    s.api_url.get_or_insert_with(|| DEFAULT_GRAPH_BASE.into());
    Ok(())
}

pub struct Microsoft {
    name: String,
    display_name: String,
    client_id: String,
    /// A confidential ("Web") registration sends its secret in the form, as Microsoft documents.
    client_auth: ClientAuth,
    tenant: String,
    /// The pinned tenant's GUID: the configured GUID, or a domain's once resolved; `None` for
    /// `organizations` and `common`.
    pinned: Pinned,
    login_base: String,
    graph_base: String,
    redirect_uri: String,
    scopes: Vec<String>,
    allowed_scopes: Option<Vec<String>>,
    /// The variables hints tell the operator to fix.
    secret_var: String,
    tenant_var: String,
    client_id_var: String,
    scopes_var: String,
    login_var: String,
    graph_var: String,
}

/// Whether sign-ins are pinned to one tenant, and its GUID.
enum Pinned {
    /// `organizations`, `common`, `consumers`: any tenant.
    No,
    Guid(String),
    /// A domain, resolved to its tenant's GUID at start-up or, if that failed, at first use.
    Domain(Mutex<Option<String>>),
}

/// The multi-tenant aliases of the identity platform.
fn is_alias(tenant: &str) -> bool {
    ["organizations", "common", "consumers"]
        .iter()
        .any(|a| tenant.eq_ignore_ascii_case(a))
}

impl Microsoft {
    pub fn new(s: &ProviderSettings, budget: Duration) -> Self {
        let tenant = s.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.into());
        let pinned = if is_alias(&tenant) {
            Pinned::No
        } else if is_guid(&tenant) {
            Pinned::Guid(tenant.to_lowercase())
        } else {
            Pinned::Domain(Mutex::new(None))
        };
        let m = Microsoft {
            name: s.name.clone(),
            display_name: s
                .display_name
                .clone()
                .unwrap_or_else(|| DISPLAY_NAME.into()),
            client_id: s.client_id.clone(),
            client_auth: match &s.client_secret {
                Some(secret) => ClientAuth::SecretPost(secret.clone()),
                None => ClientAuth::None,
            },
            tenant,
            pinned,
            login_base: s
                .login_url
                .clone()
                .unwrap_or_else(|| DEFAULT_LOGIN_BASE.into()),
            graph_base: s
                .api_url
                .clone()
                .unwrap_or_else(|| DEFAULT_GRAPH_BASE.into()),
            redirect_uri: s.redirect_uri.clone(),
            scopes: s.scopes.clone(),
            allowed_scopes: s.allowed_scopes.clone(),
            secret_var: s.var("CLIENT_SECRET"),
            tenant_var: s.var("TENANT"),
            client_id_var: s.var("CLIENT_ID"),
            scopes_var: s.var("SCOPES"),
            login_var: s.var("LOGIN_URL"),
            graph_var: s.var("API_URL"),
        };
        if let Pinned::Domain(_) = m.pinned {
            // Not fatal: the identity platform may be unreachable for a moment at start-up;
            // the first sign-in tries again, and fails closed if it still cannot resolve.
            match m.pinned_tenant(budget) {
                Ok(guid) => crate::logging::info(
                    "tenant_resolved",
                    json!({ "provider": m.name, "tenant": m.tenant, "tid": guid }),
                ),
                Err(f) => crate::logging::warn(
                    "tenant_unresolved",
                    json!({ "provider": m.name, "tenant": m.tenant, "error": f.detail,
                            "effect": "resolved again at the first sign-in" }),
                ),
            }
        }
        m
    }

    fn endpoint(&self, name: &str) -> String {
        format!("{}/{}/oauth2/v2.0/{name}", self.login_base, self.tenant)
    }

    /// The GUID sign-ins are pinned to (`None`: any tenant), resolving a domain if need be.
    fn pinned_tenant(&self, budget: Duration) -> Result<Option<String>, SignInFailure> {
        let cache = match &self.pinned {
            Pinned::No => return Ok(None),
            Pinned::Guid(guid) => return Ok(Some(guid.clone())),
            Pinned::Domain(cache) => cache,
        };
        if let Some(guid) = cache.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(Some(guid));
        }
        let guid = self.resolve_domain(budget)?;
        *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(guid.clone());
        Ok(Some(guid))
    }

    /// A tenant's domain to its GUID: the `issuer` of its OpenID configuration is
    /// `{login base}/{GUID}/v2.0`.
    fn resolve_domain(&self, budget: Duration) -> Result<String, SignInFailure> {
        let url = format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.login_base, self.tenant
        );
        let failed = |detail: String| {
            SignInFailure::new(Reason::ProviderError, detail).with_hint(Some(format!(
                "{} names a domain that could not be resolved to its tenant id: check it, or \
                 set the tenant GUID instead",
                self.tenant_var
            )))
        };
        let response = crate::outbound::agent(budget)
            .get(&url)
            .header("Accept", "application/json")
            .call();
        let (status, document) =
            super::read_json(response).map_err(|e| failed(format!("GET {url}: {e}")))?;
        if status != 200 {
            return Err(failed(format!("GET {url} answered HTTP {status}")));
        }
        document["issuer"]
            .as_str()
            .and_then(|issuer| tenant_of_issuer(issuer, &self.login_base))
            .ok_or_else(|| failed(format!("GET {url}: the issuer names no tenant GUID")))
    }

    /// What to fix in the app registration for Microsoft errors operators meet in practice.
    fn hint_for(&self, description: &str) -> Option<String> {
        let (secret, tenant, client) = (&self.secret_var, &self.tenant_var, &self.client_id_var);
        let redirect = &self.redirect_uri;
        let hint = match aadsts_code(description)? {
            "AADSTS7000218" => format!("the app registration is a confidential (Web) client: set {secret}, or add the redirect URI under 'Mobile and desktop applications' to use a public client"),
            "AADSTS7000215" => format!("{secret} is wrong or expired: create a new client secret in the app registration"),
            "AADSTS7000222" => "the client secret has expired: create a new one in the app registration".into(),
            "AADSTS50011" => format!("the redirect URI is not registered: add {redirect} to the app registration exactly"),
            "AADSTS500112" => format!("the redirect URI differs from the one used at sign-in ({redirect}): check the public URL"),
            "AADSTS700016" => format!("the application was not found in the tenant: check {client} and {tenant}"),
            "AADSTS90002" => format!("the tenant was not found: check {tenant}"),
            "AADSTS65001" => "consent is required: grant admin consent for the scopes, or create the session with force_consent".into(),
            "AADSTS65004" => "the person declined consent".into(),
            "AADSTS501481" => "the PKCE verifier did not match: a proxy may have altered the request".into(),
            "AADSTS70000" => "the authorization code was invalid or already used".into(),
            "AADSTS54005" => "the authorization code was already redeemed".into(),
            "AADSTS9002313" => "the token request was malformed".into(),
            "AADSTS50020" => format!("the account is from a tenant the app does not accept: check the supported account types or {tenant}"),
            _ => return None,
        };
        Some(hint)
    }
}

/// The first known AADSTS code in a description (`AADSTS7000218: ...` -> `AADSTS7000218`).
fn aadsts_code(description: &str) -> Option<&'static str> {
    const CODES: &[&str] = &[
        "AADSTS7000218",
        "AADSTS7000215",
        "AADSTS7000222",
        "AADSTS500112",
        "AADSTS501481",
        "AADSTS700016",
        "AADSTS9002313",
        "AADSTS50011",
        "AADSTS50020",
        "AADSTS54005",
        "AADSTS65001",
        "AADSTS65004",
        "AADSTS70000",
        "AADSTS90002",
    ];
    // Longest first, so AADSTS500112 is not read as AADSTS50011.
    CODES.iter().copied().find(|code| {
        description.match_indices(code).any(|(at, _)| {
            !description[at + code.len()..].starts_with(|c: char| c.is_ascii_digit())
        })
    })
}

impl Provider for Microsoft {
    fn name(&self) -> &str {
        &self.name
    }

    fn display_name(&self) -> &str {
        &self.display_name
    }

    fn read_only(&self) -> bool {
        true
    }

    fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    fn scopes(&self, requested: Option<&[String]>) -> Result<Vec<String>, Error> {
        let scopes = match requested {
            None => self.scopes.clone(),
            Some(list) => {
                let scopes = read_only_scopes(&list.join(" ")).map_err(|_| Error::WriteScope)?;
                match &self.allowed_scopes {
                    Some(allowed) => super::allowed_subset(&scopes, allowed)?,
                    None => scopes,
                }
            }
        };
        // offline_access brings the refresh token; openid brings the id_token whose `tid` the
        // tenant check reads; without a pinned tenant, email brings the `email` claim that
        // `xms_edov` vouches for. All are sign-in scopes, not data access.
        let sign_in: &[&str] = match self.pinned {
            Pinned::No => &["openid", "offline_access", "email"],
            _ => &["openid", "offline_access"],
        };
        Ok(with_scopes(scopes, sign_in))
    }

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
            .append_pair("nonce", r.nonce);
        if let Some(hint) = r.login_hint {
            query.append_pair("login_hint", hint);
        }
        if r.force_consent {
            query.append_pair("prompt", "consent");
        }
        format!("{}?{}", self.endpoint("authorize"), query.finish())
    }

    /// Microsoft does not send `iss` in authorization responses (nor advertise RFC 9207), so
    /// its absence is fine; when present it must be this identity platform's issuer, and the
    /// pinned tenant's when there is one.
    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInFailure> {
        let Some(iss) = iss else { return Ok(()) };
        let tenant = tenant_of_issuer(iss, &self.login_base);
        let pinned = match &self.pinned {
            Pinned::No => None,
            Pinned::Guid(guid) => Some(guid.clone()),
            Pinned::Domain(cache) => cache.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let ok = match (&tenant, pinned) {
            (None, _) => false,
            (Some(t), Some(p)) => *t == p,
            (Some(_), None) => true,
        };
        if ok {
            Ok(())
        } else {
            Err(SignInFailure::new(
                Reason::IssuerMismatch,
                format!("the authorization response's iss is {iss:?}"),
            ))
        }
    }

    fn exchange(
        &self,
        code: &Secret,
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
                code,
                verifier,
                // Microsoft's v2.0 endpoint wants the scopes again at redemption.
                extra: &[("scope", &scope)],
            },
            budget,
            &|description| self.hint_for(description),
        )
    }

    fn identity(
        &self,
        grant: &Grant,
        nonce: &str,
        budget: Duration,
    ) -> Result<Identity, SignInFailure> {
        let claims = grant
            .id_token
            .as_ref()
            .and_then(|t| jwt_claims(t.expose()))
            .ok_or_else(|| {
                SignInFailure::new(
                    Reason::IdTokenInvalid,
                    "the token response has no readable id_token",
                )
            })?;
        // Unsigned claims (see the top of the file), yet still this sign-in's: the nonce sent.
        if claims
            .get("nonce")
            .is_some_and(|n| n.as_str() != Some(nonce))
        {
            return Err(SignInFailure::new(
                Reason::IdTokenInvalid,
                "id_token_nonce: the id_token's nonce is not the one sent",
            ));
        }
        let tenant = claims["tid"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
            .ok_or_else(|| {
                SignInFailure::new(Reason::IdTokenInvalid, "the id_token has no tid claim")
            })?;
        let pinned = self.pinned_tenant(budget)?;
        if let Some(pinned) = &pinned {
            if tenant != *pinned {
                return Err(SignInFailure::new(
                    Reason::TenantMismatch,
                    format!("id_token tid is {tenant}, pinned to {pinned}"),
                ));
            }
        }
        let response = crate::outbound::agent(budget)
            .get(&format!("{}/v1.0/me", self.graph_base))
            .header(
                "Authorization",
                &format!("Bearer {}", grant.access_token.expose()),
            )
            .header("Accept", "application/json")
            .call();
        let (status, me) = super::read_json(response).map_err(|detail| {
            SignInFailure::new(Reason::GraphFailed, detail).with_hint(Some(
                "Microsoft Graph did not answer in time; check the Graph base URL and egress",
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
        // The object id: Graph's `id` (the id_token carries `oid` only with the profile scope).
        let oid = me["id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_lowercase)
            .ok_or_else(|| SignInFailure::new(Reason::GraphFailed, "Graph /me has no id"))?;
        if claims["oid"]
            .as_str()
            .is_some_and(|o| !o.eq_ignore_ascii_case(&oid))
        {
            return Err(SignInFailure::new(
                Reason::GraphFailed,
                "Graph /me answered for another object than the id_token's oid",
            ));
        }
        let addresses = addresses(&claims, &me, pinned.is_some());
        Ok(Identity {
            subject: format!("{tenant}/{oid}"),
            email: addresses.email,
            email_verified: addresses.verified,
            unverified_email: addresses.unverified,
            tenant: Some(tenant),
        })
    }

    fn no_refresh_token_hint(&self) -> Option<String> {
        Some(format!(
            "include offline_access in {} and make sure the app may request it",
            self.scopes_var
        ))
    }

    fn error_hint(&self, description: &str) -> Option<String> {
        self.hint_for(description)
    }

    fn describe(&self) -> Value {
        json!({
            "name": self.name,
            "kind": "microsoft",
            "redirect_uri": self.redirect_uri,
            "tenant": self.tenant,
            "confidential_client": self.client_auth.is_confidential(),
            "scopes": self.scopes.join(" "),
        })
    }

    /// The tenant's OpenID configuration (it resolves a tenant domain, and answers only for a
    /// tenant that exists) and Graph, which every sign-in asks who signed in. The id_token's
    /// claims are read without its keys (see the top of the file), so the keys are not needed.
    fn upstreams(&self) -> Vec<Upstream> {
        vec![
            Upstream {
                name: "discovery",
                url: format!(
                    "{}/{}/v2.0/.well-known/openid-configuration",
                    self.login_base, self.tenant
                ),
                wanted: Wanted::Discovery(None),
                setting: format!("{} and {}", self.login_var, self.tenant_var),
            },
            Upstream {
                name: "graph",
                url: format!("{}/v1.0/me", self.graph_base),
                wanted: Wanted::AnyAnswer,
                setting: self.graph_var.clone(),
            },
        ]
    }
}

/// The account's addresses, and which one the sign-in vouches for.
#[derive(Debug, PartialEq, Eq)]
struct Addresses {
    email: Option<String>,
    verified: bool,
    /// Another address the account carries, not vouched for.
    unverified: Option<String>,
}

/// A pinned tenant's directory vouches for Graph's `mail` (else the UPN). Without one, only
/// `xms_edov` vouches, and for the id_token's `email` claim: that address is the account's
/// verified e-mail, and a different Graph `mail` (a tenant admin's to set, to anything) is only
/// an unverified one. No true `xms_edov`, or no `email` claim for it to vouch for: the Graph
/// address, unverified. Lower-cased.
fn addresses(claims: &Value, me: &Value, pinned: bool) -> Addresses {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_lowercase);
    let graph = text(&me["mail"]).or_else(|| text(&me["userPrincipalName"]));
    if pinned {
        return Addresses {
            email: graph,
            verified: true,
            unverified: None,
        };
    }
    let vouched = text(&claims["email"]).filter(|_| domain_owner_verified(&claims["xms_edov"]));
    match vouched {
        Some(email) => Addresses {
            unverified: graph.filter(|g| *g != email),
            email: Some(email),
            verified: true,
        },
        None => Addresses {
            email: graph,
            verified: false,
            unverified: None,
        },
    }
}

/// `xms_edov` is documented as a boolean; its truthy encodings elsewhere are accepted too, and
/// anything else (absent, false, "0") is not a verification.
fn domain_owner_verified(claim: &Value) -> bool {
    match claim {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_u64() == Some(1),
        Value::String(s) => s == "1" || s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// `{login base}/{GUID}/v2.0` -> the GUID, lower-cased.
fn tenant_of_issuer(issuer: &str, login_base: &str) -> Option<String> {
    let tenant = issuer
        .strip_prefix(login_base)?
        .strip_prefix('/')?
        .strip_suffix("/v2.0")?;
    is_guid(tenant).then(|| tenant.to_lowercase())
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Splits and checks scopes: only sign-in scopes and read-only Graph scopes pass (an allow-list:
/// anything not recognisably read-only is refused, so new write scopes fail closed).
pub fn read_only_scopes(scopes: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for scope in scopes.split_whitespace() {
        if !is_read_only_scope(scope) {
            return Err(format!("{scope} is not a read-only scope"));
        }
        if !out.iter().any(|s| s == scope) {
            out.push(scope.to_string());
        }
    }
    if out.is_empty() {
        return Err("no scopes given".into());
    }
    Ok(out)
}

pub fn is_read_only_scope(scope: &str) -> bool {
    if matches!(scope, "offline_access" | "openid" | "profile" | "email") {
        return true;
    }
    let name = scope
        .strip_prefix("https://graph.microsoft.com/")
        .unwrap_or(scope);
    let lower = name.to_ascii_lowercase();
    let read_suffix = [".read", ".read.all", ".readbasic.all", ".read.shared"]
        .iter()
        .any(|s| lower.ends_with(s));
    read_suffix
        && !lower.contains("write")
        && !lower.contains("send")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_read_from_the_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"tid":"ABC"}"#);
        assert_eq!(jwt_claims(&format!("h.{payload}.s")).unwrap()["tid"], "ABC");
        assert!(jwt_claims("garbage").is_none());
    }

    /// The `WK_M365_*` provider as the shared test settings build it.
    fn settings() -> ProviderSettings {
        ProviderSettings {
            redirect_uri: "https://relay.example/m365/callback".into(),
            source: crate::providers_config::Source::Wk,
            ..crate::providers_config::tests_support::settings(
                "m365",
                crate::providers_config::Kind::Microsoft,
            )
        }
    }

    #[test]
    fn known_errors_get_a_hint_naming_the_variable() {
        let mut s = settings();
        check_settings(&mut s).unwrap();
        let m = Microsoft::new(&s, Duration::from_secs(1));
        assert!(m
            .hint_for("AADSTS7000218: The request body must contain")
            .unwrap()
            .contains("WK_M365_CLIENT_SECRET"));
        assert!(m
            .hint_for("AADSTS50011: redirect")
            .unwrap()
            .contains("https://relay.example/m365/callback"));
        assert!(m
            .hint_for("AADSTS500112: reply address")
            .unwrap()
            .contains("differs"));
        assert!(m.hint_for("something new").is_none());
    }

    #[test]
    fn only_read_only_scopes_pass() {
        for ok in [
            "offline_access",
            "User.Read",
            "Mail.Read",
            "Calendars.Read",
            "Files.Read.All",
            "User.ReadBasic.All",
            "https://graph.microsoft.com/Mail.Read",
            "openid",
        ] {
            assert!(is_read_only_scope(ok), "{ok}");
        }
        for bad in [
            "Mail.Send",
            "Mail.ReadWrite",
            "Calendars.ReadWrite",
            "Files.ReadWrite.All",
            "User.ReadWrite.All",
            "Directory.AccessAsUser.All",
            "Mail.Read.Write",
            "Sites.FullControl.All",
            "Mail.Send.Shared",
            ".default",
            "Mail.Read;x",
            "",
        ] {
            assert!(!is_read_only_scope(bad), "{bad}");
        }
        assert!(read_only_scopes("offline_access Mail.Send").is_err());
        assert_eq!(
            read_only_scopes("User.Read  User.Read").unwrap(),
            vec!["User.Read"]
        );
    }

    #[test]
    fn settings_follow_microsofts_rules() {
        let mut s = settings();
        check_settings(&mut s).unwrap();
        assert_eq!(s.tenant.as_deref(), Some("organizations"));
        assert_eq!(s.scopes.join(" "), DEFAULT_SCOPES);
        let mut s = settings();
        s.scopes = vec!["offline_access".into(), "Mail.Send".into()];
        assert!(check_settings(&mut s)
            .unwrap_err()
            .contains("WK_M365_SCOPES"));
        let mut s = settings();
        s.scopes = vec!["Mail.Read".into()];
        assert!(check_settings(&mut s)
            .unwrap_err()
            .contains("offline_access"));
        let mut s = settings();
        s.tenant = Some("a/b".into());
        assert!(check_settings(&mut s)
            .unwrap_err()
            .contains("WK_M365_TENANT_ID"));
        let mut s = settings();
        check_settings(&mut s).unwrap();
        let m = Microsoft::new(&s, Duration::from_secs(1));
        assert_eq!(
            m.scopes(Some(&["Mail.Send".to_string()])),
            Err(Error::WriteScope)
        );
        let scopes = m.scopes(Some(&["User.Read".to_string()])).unwrap();
        assert_eq!(scopes, ["openid", "offline_access", "email", "User.Read"]);
        // A pinned tenant's directory vouches for Graph's mail: no `email` claim needed.
        let mut s = settings();
        s.tenant = Some("11111111-2222-3333-4444-555555555555".into());
        check_settings(&mut s).unwrap();
        let pinned = Microsoft::new(&s, Duration::from_secs(1));
        let scopes = pinned.scopes(Some(&["User.Read".to_string()])).unwrap();
        assert_eq!(scopes, ["openid", "offline_access", "User.Read"]);
    }

    #[test]
    fn xms_edov_vouches_for_the_id_tokens_email_not_graphs_mail() {
        let me =
            |mail: Option<&str>| json!({ "mail": mail, "userPrincipalName": "Ana@Tenant.Example" });
        let claims = |email: Option<&str>, edov: Value| json!({ "email": email, "xms_edov": edov });
        let addr = |email: Option<&str>, verified, unverified: Option<&str>| Addresses {
            email: email.map(String::from),
            verified,
            unverified: unverified.map(String::from),
        };
        // The same address in both: verified.
        assert_eq!(
            addresses(
                &claims(Some("Ana@Contoso.Example"), json!(true)),
                &me(Some("ana@contoso.example")),
                false
            ),
            addr(Some("ana@contoso.example"), true, None)
        );
        // xms_edov vouches for the id_token's email; Graph's other mail is not verified.
        assert_eq!(
            addresses(
                &claims(Some("x@vouched.example"), json!(true)),
                &me(Some("Y@Victim.Example")),
                false
            ),
            addr(Some("x@vouched.example"), true, Some("y@victim.example"))
        );
        // Without a true xms_edov, or without an email claim to vouch for: Graph's, unverified.
        for edov in [json!(false), Value::Null] {
            assert_eq!(
                addresses(
                    &claims(Some("x@vouched.example"), edov),
                    &me(Some("y@victim.example")),
                    false
                ),
                addr(Some("y@victim.example"), false, None)
            );
        }
        assert_eq!(
            addresses(
                &claims(None, json!(true)),
                &me(Some("y@victim.example")),
                false
            ),
            addr(Some("y@victim.example"), false, None)
        );
        assert_eq!(
            addresses(&claims(None, json!(true)), &me(None), false),
            addr(Some("ana@tenant.example"), false, None),
            "the UPN when there is no mail"
        );
        // A pinned tenant vouches for Graph's mail (else the UPN), whatever the claims say.
        assert_eq!(
            addresses(
                &claims(Some("x@vouched.example"), json!(false)),
                &me(Some("Y@Contoso.Example")),
                true
            ),
            addr(Some("y@contoso.example"), true, None)
        );
        assert_eq!(
            addresses(&claims(None, Value::Null), &me(None), true),
            addr(Some("ana@tenant.example"), true, None)
        );
    }

    #[test]
    fn issuers_name_their_tenant() {
        let base = "https://login.microsoftonline.com";
        assert_eq!(
            tenant_of_issuer(
                "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
                base
            )
            .as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        for other in [
            "https://login.microsoftonline.com/{tenantid}/v2.0",
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555",
            "https://evil.example/11111111-2222-3333-4444-555555555555/v2.0",
            "https://login.microsoftonline.com.evil.example/11111111-2222-3333-4444-555555555555/v2.0",
        ] {
            assert_eq!(tenant_of_issuer(other, base), None, "{other}");
        }
    }

    #[test]
    fn only_a_true_xms_edov_verifies() {
        for yes in [json!(true), json!(1), json!("1"), json!("true")] {
            assert!(domain_owner_verified(&yes), "{yes}");
        }
        for no in [
            json!(false),
            json!(0),
            json!("0"),
            json!("yes"),
            Value::Null,
        ] {
            assert!(!domain_owner_verified(&no), "{no}");
        }
    }

    #[test]
    fn the_iss_parameter_is_optional_but_must_be_microsofts() {
        let mut s = settings();
        s.tenant = Some("11111111-2222-3333-4444-555555555555".into());
        check_settings(&mut s).unwrap();
        let pinned = Microsoft::new(&s, Duration::from_secs(1));
        assert!(pinned.check_response_issuer(None).is_ok());
        assert!(pinned
            .check_response_issuer(Some(
                "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
            ))
            .is_ok());
        for wrong in [
            "https://login.microsoftonline.com/99999999-2222-3333-4444-555555555555/v2.0",
            "https://accounts.google.com",
        ] {
            assert_eq!(
                pinned
                    .check_response_issuer(Some(wrong))
                    .unwrap_err()
                    .reason,
                Reason::IssuerMismatch
            );
        }
        let any = Microsoft::new(
            &{
                let mut s = settings();
                check_settings(&mut s).unwrap();
                s
            },
            Duration::from_secs(1),
        );
        assert!(any
            .check_response_issuer(Some(
                "https://login.microsoftonline.com/99999999-2222-3333-4444-555555555555/v2.0"
            ))
            .is_ok());
        assert!(any
            .check_response_issuer(Some("https://accounts.google.com"))
            .is_err());
    }

    #[test]
    fn guid_tenants_are_pinned() {
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("organizations"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
    }
}
