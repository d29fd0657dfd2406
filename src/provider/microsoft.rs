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

//!
//! The `WK_M365_*` variables and flags of the version before providers define a Microsoft
//! provider named `m365`, served at `/m365/*` ([`WkArgs`], flattened into the command line).
//!
//! Refresh tokens: Entra issues a new one with each refresh and the old one stays valid until
//! it expires (`Rotation::ReusableAfterRotation`); one unused for 90 days expires. The identity
//! platform offers no revocation endpoint.

use super::oauth::{self, ClientAuth};
use super::settings::{split_scopes, Form, ProviderSettings, Setting, Source};
use super::{with_scopes, Grant, Identity, Kind, Provider, Upstream, Wanted};
use crate::connections::refresher::{RefreshOutcome, Refresher, Rotation};
use crate::error::{Error, OwnReason, Reason, SignInFailure, Words};
use crate::outbound::{Http, Request};
use crate::secret::Secret;
use crate::urls::checked_url;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `microsoft` kind in the registry (`provider::KINDS`).
pub static KIND: Kind = Kind {
    name: "microsoft",
    settings: &[
        Setting {
            name: "TENANT",
            form: Form::Text,
        },
        Setting {
            name: "API_URL",
            form: Form::Url,
        },
        Setting {
            name: "LOGIN_URL",
            form: Form::Url,
        },
    ],
    check: check_settings,
    build: |s, http, budget| Ok(Arc::new(Microsoft::new(s, http, budget))),
    reasons: &[&TENANT_MISMATCH, &GRAPH_FAILED],
};

pub const DEFAULT_SCOPES: &str = "offline_access User.Read Mail.Read Calendars.Read";
pub const DEFAULT_LOGIN_BASE: &str = "https://login.microsoftonline.com";
pub const DEFAULT_GRAPH_BASE: &str = "https://graph.microsoft.com";
pub const DEFAULT_TENANT: &str = "organizations";
const DISPLAY_NAME: &str = "Microsoft 365";
/// An Entra refresh token unused this long expires (its inactivity lifetime).
const IDLE_LIMIT: Duration = Duration::from_secs(90 * 24 * 3600);
/// What a session asking for a scope that is not read-only is told (400).
pub const WRITE_SCOPE_REFUSED: &str = "Only read-only Microsoft Graph scopes are allowed";

/// The account belongs to another tenant than the pinned one.
pub static TENANT_MISMATCH: OwnReason = OwnReason {
    code: "tenant_mismatch",
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

/// Microsoft Graph `/me` failed (or answered for another account than the id_token's).
pub static GRAPH_FAILED: OwnReason = OwnReason {
    code: "graph_failed",
    status: 502,
    words: Words {
        en: [
            "We could not connect your account",
            "The {provider} sign-in did not complete, so nothing was connected. Ask the assistant for a new link; if it happens again, tell the person who sent it.",
        ],
        pt_br: [
            "Não foi possível conectar sua conta",
            "O login da conta {provider} não foi concluído, então nada foi conectado. Peça um novo link ao assistente; se acontecer de novo, avise quem enviou o link.",
        ],
    },
};

/// The name of the provider the `WK_M365_*` variables define, which `/m365/*` serves.
pub const WK_NAME: &str = "m365";

/// The `WK_M365_*` variable of each setting of the `m365` provider.
const WK_NAMES: &[(&str, &str)] = &[
    ("CLIENT_ID", "WK_M365_CLIENT_ID"),
    ("CLIENT_SECRET", "WK_M365_CLIENT_SECRET"),
    ("TENANT", "WK_M365_TENANT_ID"),
    ("LOGIN_URL", "WK_M365_LOGIN_BASE_URL"),
    ("API_URL", "WK_M365_GRAPH_BASE_URL"),
    ("SCOPES", "WK_M365_SCOPES"),
];

/// The Microsoft 365 provider's settings of the version before providers, as flags and
/// `WK_M365_*` variables (flattened into the broker's).
#[derive(clap::Args, Debug, Clone)]
#[group(skip)]
pub struct WkArgs {
    /// Application (client) id of the Microsoft Entra app registration: defines the Microsoft
    /// 365 provider `m365`, served at /m365/*.
    #[arg(long, env = "WK_M365_CLIENT_ID")]
    pub m365_client_id: Option<String>,
    /// Tenant: a GUID or a domain pins sign-ins to that tenant; `organizations` or `common`
    /// do not.
    #[arg(long, env = "WK_M365_TENANT_ID", default_value = DEFAULT_TENANT)]
    pub m365_tenant_id: String,
    /// Client secret of a confidential ("Web") app registration; unset: public client (PKCE only).
    #[arg(long, env = "WK_M365_CLIENT_SECRET", hide_env_values = true)]
    pub m365_client_secret: Option<String>,
    /// Microsoft identity platform base URL (national clouds, tests).
    #[arg(long, env = "WK_M365_LOGIN_BASE_URL", default_value = DEFAULT_LOGIN_BASE)]
    pub m365_login_base_url: String,
    /// Microsoft Graph base URL (national clouds, tests).
    #[arg(long, env = "WK_M365_GRAPH_BASE_URL", default_value = DEFAULT_GRAPH_BASE)]
    pub m365_graph_base_url: String,
    /// Space-separated scopes; only read-only Graph scopes are accepted.
    #[arg(long, env = "WK_M365_SCOPES", default_value = DEFAULT_SCOPES)]
    pub m365_scopes: String,
}

impl Default for WkArgs {
    fn default() -> Self {
        WkArgs {
            m365_client_id: None,
            m365_tenant_id: DEFAULT_TENANT.into(),
            m365_client_secret: None,
            m365_login_base_url: DEFAULT_LOGIN_BASE.into(),
            m365_graph_base_url: DEFAULT_GRAPH_BASE.into(),
            m365_scopes: DEFAULT_SCOPES.into(),
        }
    }
}

impl WkArgs {
    /// The variable that defines the provider (and so turns broker mode on).
    pub const DEFINED_BY: &'static str = "WK_M365_CLIENT_ID";

    /// Whether the provider is defined (a client id that is not blank).
    pub fn is_set(&self) -> bool {
        self.m365_client_id
            .as_deref()
            .is_some_and(|id| !id.trim().is_empty())
    }

    /// The `m365` provider's settings, its redirect URI under `public`; `None` when it is not
    /// defined. Checked for form here; Microsoft's rules apply later (`check_settings`).
    pub fn settings(&self, public: &str) -> Result<Option<ProviderSettings>, String> {
        let Some(client_id) = self
            .m365_client_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
        else {
            return Ok(None);
        };
        let mut s = ProviderSettings::new(
            WK_NAME,
            &KIND,
            format!("{public}/m365/callback"),
            client_id.to_string(),
        );
        s.client_secret = self
            .m365_client_secret
            .clone()
            .filter(|secret| !secret.is_empty())
            .map(Secret::new);
        s.scopes = split_scopes(&self.m365_scopes);
        s.own.insert(
            "API_URL",
            checked_url(&self.m365_graph_base_url, "WK_M365_GRAPH_BASE_URL")?,
        );
        s.own.insert(
            "LOGIN_URL",
            checked_url(&self.m365_login_base_url, "WK_M365_LOGIN_BASE_URL")?,
        );
        s.own
            .insert("TENANT", self.m365_tenant_id.trim().to_string());
        s.source = Source::Legacy(WK_NAMES);
        Ok(Some(s))
    }
}

/// Applies Microsoft's rules to the settings: a tenant of the right form, read-only scopes
/// including `offline_access` (the broker hands out a refresh token), and the defaults.
pub fn check_settings(s: &mut ProviderSettings) -> Result<(), String> {
    s.set_default("TENANT", DEFAULT_TENANT);
    let tenant = s.get("TENANT").unwrap_or_default();
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
        s.scopes = split_scopes(DEFAULT_SCOPES);
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
    s.set_default("LOGIN_URL", DEFAULT_LOGIN_BASE);
    s.set_default("API_URL", DEFAULT_GRAPH_BASE);
    Ok(())
}

pub struct Microsoft {
    name: String,
    display_name: String,
    /// A confidential ("Web") registration sends its secret in the form, as Microsoft
    /// documents; the v2.0 endpoints want the scopes again at the token endpoint.
    client: oauth::Client,
    tenant: String,
    /// The pinned tenant's GUID: the configured GUID, or a domain's once resolved; `None` for
    /// `organizations` and `common`.
    pinned: Pinned,
    login_base: String,
    graph_base: String,
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
    pub fn new(s: &ProviderSettings, http: Arc<dyn Http>, budget: Duration) -> Self {
        let tenant = s.get("TENANT").unwrap_or(DEFAULT_TENANT).to_string();
        let pinned = if is_alias(&tenant) {
            Pinned::No
        } else if is_guid(&tenant) {
            Pinned::Guid(tenant.to_lowercase())
        } else {
            Pinned::Domain(Mutex::new(None))
        };
        let login_base = s.get("LOGIN_URL").unwrap_or(DEFAULT_LOGIN_BASE).to_string();
        let endpoint = |name: &str| format!("{login_base}/{tenant}/oauth2/v2.0/{name}");
        let client = oauth::Client {
            authorize_params: vec![("response_mode".into(), "query".into())],
            scope_in_token_requests: true,
            ..oauth::Client::new(
                &s.client_id,
                match &s.client_secret {
                    Some(secret) => ClientAuth::SecretPost(secret.clone()),
                    None => ClientAuth::None,
                },
                &s.redirect_uri,
                &endpoint("authorize"),
                &endpoint("token"),
                http,
            )
        };
        let m = Microsoft {
            name: s.name.clone(),
            display_name: s
                .display_name
                .clone()
                .unwrap_or_else(|| DISPLAY_NAME.into()),
            client,
            tenant,
            pinned,
            login_base,
            graph_base: s.get("API_URL").unwrap_or(DEFAULT_GRAPH_BASE).to_string(),
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
        let request = Request::get(&url, budget).header("Accept", "application/json");
        let (status, document) = super::call_json(&*self.client.http, request)
            .map_err(|e| failed(format!("GET {url}: {e}")))?;
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
        let redirect = &self.client.redirect_uri;
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

    fn client(&self) -> &oauth::Client {
        &self.client
    }

    fn scopes(&self, requested: Option<&[String]>) -> Result<Vec<String>, Error> {
        let scopes = match requested {
            None => self.scopes.clone(),
            Some(list) => {
                let scopes = read_only_scopes(&list.join(" "))
                    .map_err(|_| Error::BadRequest(WRITE_SCOPE_REFUSED))?;
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
        // Unsigned claims (see the top of the file), yet still this sign-in's: the nonce sent,
        // which Entra always echoes (an id_token without it is not an answer to this request).
        let sent = crate::secret::Secret::new(nonce.to_string());
        if !claims["nonce"].as_str().is_some_and(|n| sent.matches(n)) {
            return Err(SignInFailure::new(
                Reason::IdTokenInvalid,
                "id_token_nonce: the id_token's nonce is missing or not the one sent",
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
                    Reason::Own(&TENANT_MISMATCH),
                    format!("id_token tid is {tenant}, pinned to {pinned}"),
                ));
            }
        }
        let request = Request::get(format!("{}/v1.0/me", self.graph_base), budget)
            .header(
                "Authorization",
                format!("Bearer {}", grant.access_token.expose()),
            )
            .header("Accept", "application/json");
        let (status, me) = super::call_json(&*self.client.http, request).map_err(|detail| {
            SignInFailure::new(Reason::Own(&GRAPH_FAILED), detail).with_hint(Some(
                "Microsoft Graph did not answer in time; check the Graph base URL and egress",
            ))
        })?;
        if status != 200 {
            return Err(SignInFailure::new(
                Reason::Own(&GRAPH_FAILED),
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
            .ok_or_else(|| SignInFailure::new(Reason::Own(&GRAPH_FAILED), "Graph /me has no id"))?;
        if claims["oid"]
            .as_str()
            .is_some_and(|o| !o.eq_ignore_ascii_case(&oid))
        {
            return Err(SignInFailure::new(
                Reason::Own(&GRAPH_FAILED),
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
            "redirect_uri": self.client.redirect_uri,
            "tenant": self.tenant,
            "confidential_client": self.client.auth.is_confidential(),
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

/// Entra rotates refresh tokens but keeps the old ones valid; 90 days unused, one expires.
impl Refresher for Microsoft {
    fn rotation(&self) -> Rotation {
        Rotation::ReusableAfterRotation
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
    use crate::outbound::Response;
    use crate::provider::testing::Upstream;
    use crate::provider::AuthorizeRequest;

    #[test]
    fn claims_are_read_from_the_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"tid":"ABC"}"#);
        assert_eq!(jwt_claims(&format!("h.{payload}.s")).unwrap()["tid"], "ABC");
        assert!(jwt_claims("garbage").is_none());
    }

    /// The `WK_M365_*` provider as its flags build it, with only a client id.
    fn settings() -> ProviderSettings {
        let mut s = WkArgs {
            m365_client_id: Some("client".into()),
            ..WkArgs::default()
        }
        .settings("https://relay.example")
        .unwrap()
        .unwrap();
        // As before its flags had defaults: what Microsoft's rules default to.
        s.own.clear();
        s.scopes.clear();
        s
    }

    /// A provider that reaches nothing (a pinned domain is then left unresolved).
    fn microsoft(s: &ProviderSettings) -> Microsoft {
        Microsoft::new(s, Upstream::unreachable().http, Duration::from_secs(1))
    }

    #[test]
    fn known_errors_get_a_hint_naming_the_variable() {
        let mut s = settings();
        check_settings(&mut s).unwrap();
        let m = microsoft(&s);
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
        assert_eq!(s.get("TENANT"), Some("organizations"));
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
        s.own.insert("TENANT", "a/b".into());
        assert!(check_settings(&mut s)
            .unwrap_err()
            .contains("WK_M365_TENANT_ID"));
        let mut s = settings();
        check_settings(&mut s).unwrap();
        let m = microsoft(&s);
        assert_eq!(
            m.scopes(Some(&["Mail.Send".to_string()])),
            Err(Error::BadRequest(WRITE_SCOPE_REFUSED))
        );
        let scopes = m.scopes(Some(&["User.Read".to_string()])).unwrap();
        assert_eq!(scopes, ["openid", "offline_access", "email", "User.Read"]);
        // A pinned tenant's directory vouches for Graph's mail: no `email` claim needed.
        let mut s = settings();
        s.own
            .insert("TENANT", "11111111-2222-3333-4444-555555555555".into());
        check_settings(&mut s).unwrap();
        let pinned = microsoft(&s);
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
        s.own
            .insert("TENANT", "11111111-2222-3333-4444-555555555555".into());
        check_settings(&mut s).unwrap();
        let pinned = microsoft(&s);
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
        let any = microsoft(&{
            let mut s = settings();
            check_settings(&mut s).unwrap();
            s
        });
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

    /// An id_token as the token endpoint sends it (unsigned here: its claims are read only).
    fn id_token(claims: Value) -> Secret {
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        Secret::new(format!(
            "{}.{}.sig",
            b64(&json!({"alg": "RS256"})),
            b64(&claims)
        ))
    }

    fn grant(claims: Value) -> Grant {
        Grant {
            access_token: Secret::new("at"),
            refresh_token: Some(Secret::new("rt")),
            id_token: Some(id_token(claims)),
            token_type: "Bearer".into(),
            scope: String::new(),
            expiry: None,
        }
    }

    const TID: &str = "11111111-2222-3333-4444-555555555555";
    const OID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

    fn checked(tenant: Option<&str>) -> ProviderSettings {
        let mut s = settings();
        if let Some(t) = tenant {
            s.own.insert("TENANT", t.into());
        }
        check_settings(&mut s).unwrap();
        s
    }

    #[test]
    fn sign_ins_go_to_the_tenants_v2_endpoints_with_microsofts_parameters() {
        let upstream = Upstream::answering(200, r#"{"access_token":"at","refresh_token":"rt"}"#);
        let m = Microsoft::new(
            &checked(Some(TID)),
            upstream.http.clone(),
            Duration::from_secs(1),
        );
        let scopes = m.scopes(None).unwrap();
        let url = m.authorize_url(&AuthorizeRequest {
            state: "st",
            code_challenge: "ch",
            nonce: "n",
            login_hint: Some("ana@contoso.example"),
            scopes: &scopes,
            force_consent: true,
        });
        assert!(
            url.starts_with(&format!(
                "https://login.microsoftonline.com/{TID}/oauth2/v2.0/authorize?client_id=client&"
            )),
            "{url}"
        );
        for part in [
            "response_mode=query",
            "nonce=n",
            "login_hint=ana%40contoso.example",
            "prompt=consent",
        ] {
            assert!(url.contains(part), "{part}: {url}");
        }
        m.exchange(
            &Secret::new("c"),
            &Secret::new("v"),
            &scopes,
            Duration::from_secs(1),
        )
        .unwrap();
        let sent = upstream.requests();
        assert_eq!(
            sent[0].url,
            format!("https://login.microsoftonline.com/{TID}/oauth2/v2.0/token")
        );
        // The v2.0 endpoint wants the scopes again at redemption; a public client has no secret.
        assert_eq!(sent[0].form_value("scope"), Some(scopes.join(" ")));
        assert_eq!(sent[0].form_value("client_secret"), None);
    }

    #[test]
    fn who_signed_in_is_the_tenant_and_graphs_object_id() {
        let me = |body: &'static str| {
            Upstream::new(move |r| {
                assert_eq!(r.url, "https://graph.microsoft.com/v1.0/me");
                assert_eq!(r.header_value("authorization"), Some("Bearer at"));
                Ok(Response::new(200, body))
            })
        };
        let claims = json!({"tid": TID.to_uppercase(), "oid": OID, "nonce": "n"});
        let graph =
            me(r#"{"id":"AAAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee","mail":"Ana@Contoso.example"}"#);
        let m = Microsoft::new(
            &checked(Some(TID)),
            graph.http.clone(),
            Duration::from_secs(1),
        );
        let identity = m
            .identity(&grant(claims.clone()), "n", Duration::from_secs(1))
            .unwrap();
        assert_eq!(identity.subject, format!("{TID}/{OID}"));
        assert_eq!(identity.email.as_deref(), Some("ana@contoso.example"));
        assert!(
            identity.email_verified,
            "a pinned tenant vouches for Graph's mail"
        );
        assert_eq!(identity.tenant.as_deref(), Some(TID));
        // Another tenant than the pinned one: this kind's own reason, 403.
        let other = json!({"tid": "99999999-2222-3333-4444-555555555555", "nonce": "n"});
        let f = m
            .identity(&grant(other), "n", Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(
            (f.reason.code(), f.reason.status()),
            ("tenant_mismatch", 403)
        );
        // A nonce that is not the session's.
        let f = m
            .identity(&grant(claims.clone()), "other", Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(f.reason, Reason::IdTokenInvalid);
        // Graph answering for another object, failing, or not at all: graph_failed, 502.
        let someone_else = me(r#"{"id":"ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee"}"#);
        for upstream in [
            someone_else,
            Upstream::answering(401, r#"{"error":{"code":"InvalidAuthenticationToken"}}"#),
            Upstream::unreachable(),
        ] {
            let m = Microsoft::new(
                &checked(Some(TID)),
                upstream.http.clone(),
                Duration::from_secs(1),
            );
            let f = m
                .identity(&grant(claims.clone()), "n", Duration::from_secs(1))
                .unwrap_err();
            assert_eq!(
                (f.reason.code(), f.reason.status()),
                ("graph_failed", 502),
                "{}",
                f.detail
            );
        }
    }

    #[test]
    fn a_pinned_domain_is_resolved_to_its_tenant_through_its_openid_configuration() {
        let upstream = Upstream::new(|r| {
            Ok(
                if r.url
                    .ends_with("/contoso.example/v2.0/.well-known/openid-configuration")
                {
                    Response::new(
                        200,
                        format!(r#"{{"issuer":"https://login.microsoftonline.com/{TID}/v2.0"}}"#),
                    )
                } else {
                    Response::new(404, "{}")
                },
            )
        });
        let m = Microsoft::new(
            &checked(Some("contoso.example")),
            upstream.http.clone(),
            Duration::from_secs(1),
        );
        assert_eq!(
            m.pinned_tenant(Duration::from_secs(1)).unwrap().as_deref(),
            Some(TID)
        );
        assert_eq!(upstream.requests().len(), 1, "resolved once, at start-up");
        let m = microsoft(&checked(Some("contoso.example")));
        let f = m.pinned_tenant(Duration::from_secs(1)).unwrap_err();
        assert_eq!(f.reason, Reason::ProviderError);
        assert!(f.hint.unwrap().contains("WK_M365_TENANT_ID"));
    }

    #[test]
    fn refresh_tokens_stay_valid_when_rotated_and_cannot_be_revoked() {
        let upstream = Upstream::answering(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS700082: expired"}"#,
        );
        let mut s = checked(None);
        s.client_secret = Some(Secret::new("s"));
        let m = Microsoft::new(&s, upstream.http.clone(), Duration::from_secs(1));
        assert_eq!(m.rotation(), Rotation::ReusableAfterRotation);
        assert_eq!(m.idle_limit(), Some(IDLE_LIMIT));
        let scopes = m.scopes(None).unwrap();
        assert_eq!(
            m.refresh(&Secret::new("rt"), &scopes, Duration::from_secs(1))
                .kind(),
            "invalid_grant"
        );
        let sent = upstream.requests();
        assert_eq!(sent[0].form_value("scope"), Some(scopes.join(" ")));
        assert_eq!(sent[0].form_value("client_secret").as_deref(), Some("s"));
        assert_eq!(
            m.revoke(
                Some(&Secret::new("at")),
                Some(&Secret::new("rt")),
                Duration::from_secs(1)
            ),
            Err(super::super::RevokeError::Unsupported)
        );
    }

    #[test]
    fn the_wk_flags_define_the_m365_provider_and_name_their_variables() {
        let off = WkArgs::default();
        assert!(!off.is_set());
        assert!(off.settings("https://relay.example").unwrap().is_none());
        let blank = WkArgs {
            m365_client_id: Some("  ".into()),
            ..WkArgs::default()
        };
        assert!(!blank.is_set());
        let on = WkArgs {
            m365_client_id: Some(" client ".into()),
            m365_client_secret: Some(String::new()),
            ..WkArgs::default()
        };
        let s = on.settings("https://relay.example").unwrap().unwrap();
        assert_eq!((s.name.as_str(), s.client_id.as_str()), ("m365", "client"));
        assert_eq!(s.redirect_uri, "https://relay.example/m365/callback");
        assert!(s.client_secret.is_none(), "blank is unset");
        assert_eq!(s.get("LOGIN_URL"), Some(DEFAULT_LOGIN_BASE));
        assert_eq!(s.var("SCOPES"), "WK_M365_SCOPES");
        let bad = WkArgs {
            m365_graph_base_url: "http://graph.example".into(),
            ..on
        };
        assert!(bad
            .settings("https://relay.example")
            .unwrap_err()
            .contains("WK_M365_GRAPH_BASE_URL"));
    }
}
