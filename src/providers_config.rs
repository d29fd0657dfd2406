//! The identity providers the broker signs people in with, from `OAUTH_RELAY_PROVIDERS` and the
//! `OAUTH_RELAY_PROVIDER_<NAME>_*` variables of each (and, for compatibility, the `WK_M365_*`
//! variables, which define a Microsoft provider named `m365`). The variable names depend on the
//! provider names, so clap cannot declare them: `from_env` reads them from a map that `main`
//! fills from the process environment once at start-up (tests hand in their own). Every
//! problem stops start-up with a message naming the variable; nothing here touches the network
//! (discovery happens when the providers are built, `provider::build`).

use crate::broker_config::checked_url;
use crate::secret::Secret;
use std::collections::BTreeMap;

/// Environment variables by name.
pub type Env = BTreeMap<String, String>;

pub const PROVIDERS_VAR: &str = "OAUTH_RELAY_PROVIDERS";
const PREFIX: &str = "OAUTH_RELAY_PROVIDER_";
/// The provider the `WK_M365_*` variables define, and the one `/m365/*` serves.
pub const M365: &str = "m365";

/// How a provider is spoken to: each kind is one file in `src/provider/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Oidc,
    Google,
    GitHub,
    Microsoft,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "oidc" => Some(Kind::Oidc),
            "google" => Some(Kind::Google),
            "github" => Some(Kind::GitHub),
            "microsoft" => Some(Kind::Microsoft),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Oidc => "oidc",
            Kind::Google => "google",
            Kind::GitHub => "github",
            Kind::Microsoft => "microsoft",
        }
    }

    /// The settings (variable suffixes) a provider of this kind reads, besides the common ones.
    fn own_settings(self) -> &'static [&'static str] {
        match self {
            Kind::Oidc => &["ISSUER", "AUTHORIZE_URL", "TOKEN_URL"],
            Kind::Google => &["ISSUER", "AUTHORIZE_URL", "TOKEN_URL", "HOSTED_DOMAIN"],
            Kind::GitHub => &["AUTHORIZE_URL", "TOKEN_URL", "API_URL"],
            Kind::Microsoft => &["TENANT", "LOGIN_URL", "API_URL"],
        }
    }
}

const COMMON: &[&str] = &[
    "KIND",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "CLIENT_SECRET_FILE",
    "SCOPES",
    "ALLOWED_SCOPES",
    "DISPLAY_NAME",
];
const EVERY_SETTING: &[&str] = &[
    "KIND",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "CLIENT_SECRET_FILE",
    "SCOPES",
    "ALLOWED_SCOPES",
    "DISPLAY_NAME",
    "ISSUER",
    "AUTHORIZE_URL",
    "TOKEN_URL",
    "API_URL",
    "LOGIN_URL",
    "TENANT",
    "HOSTED_DOMAIN",
];

/// Where a provider's settings came from, to name the variable in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `OAUTH_RELAY_PROVIDER_<NAME>_...`, with this prefix.
    Variables(String),
    /// The `WK_M365_*` variables (and their flags).
    Wk,
}

/// One provider's settings, checked for form (URLs, names, secrets) here and for its kind's
/// rules by its own file (`provider::check_settings`).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub name: String,
    pub kind: Kind,
    pub display_name: Option<String>,
    /// Where the provider sends the browser back to: `{public}/login/{name}/callback`
    /// (`{public}/m365/callback` for the `WK_M365_*` provider).
    pub redirect_uri: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// Requested when a session names none.
    pub scopes: Vec<String>,
    /// What a session may ask for; `None`: the same as `scopes`.
    pub allowed_scopes: Option<Vec<String>>,
    pub issuer: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub api_url: Option<String>,
    pub login_url: Option<String>,
    pub tenant: Option<String>,
    pub hosted_domain: Option<String>,
    pub source: Source,
}

impl ProviderSettings {
    /// The variable that sets `setting` (a suffix such as `CLIENT_SECRET`) for this provider.
    pub fn var(&self, setting: &str) -> String {
        match &self.source {
            Source::Variables(prefix) => format!("{prefix}{setting}"),
            Source::Wk => match setting {
                "CLIENT_ID" => "WK_M365_CLIENT_ID".into(),
                "CLIENT_SECRET" => "WK_M365_CLIENT_SECRET".into(),
                "TENANT" => "WK_M365_TENANT_ID".into(),
                "LOGIN_URL" => "WK_M365_LOGIN_BASE_URL".into(),
                "API_URL" => "WK_M365_GRAPH_BASE_URL".into(),
                "SCOPES" => "WK_M365_SCOPES".into(),
                other => format!("{PREFIX}M365_{other}"),
            },
        }
    }

    /// The scopes a session may ask for.
    pub fn allowed(&self) -> &[String] {
        self.allowed_scopes.as_deref().unwrap_or(&self.scopes)
    }
}

/// Splits a space-separated scope list, dropping repeats (RFC 6749 3.3: scopes are separated by
/// spaces, so a comma is part of a scope).
pub fn split_scopes(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for scope in value.split_whitespace() {
        if !out.iter().any(|s| s == scope) {
            out.push(scope.to_string());
        }
    }
    out
}

/// `corp-eu` -> `OAUTH_RELAY_PROVIDER_CORP_EU_`.
pub fn prefix_of(name: &str) -> String {
    format!("{PREFIX}{}_", name.to_ascii_uppercase().replace('-', "_"))
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The names in `OAUTH_RELAY_PROVIDERS` (comma- or space-separated).
pub fn provider_names(list: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|n| !n.is_empty())
    {
        if !valid_name(name) {
            return Err(format!(
                "{PROVIDERS_VAR}: {name:?} is not a provider name (lowercase letters, digits and \
                 '-', at most 32)"
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(format!("{PROVIDERS_VAR}: {name} is listed twice"));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// The providers listed in `OAUTH_RELAY_PROVIDERS`, with their redirect URIs under `public`.
/// Refuses variables of providers that are not listed and settings that do not exist or do not
/// apply to the provider's kind, so a typo cannot silently leave a setting unused.
pub fn from_env(
    list: Option<&str>,
    env: &Env,
    public: &str,
) -> Result<Vec<ProviderSettings>, String> {
    let names = provider_names(list.unwrap_or(""))?;
    let prefixes: Vec<(String, &String)> = names.iter().map(|n| (prefix_of(n), n)).collect();
    for (key, value) in env {
        if !key.starts_with(PREFIX) || value.trim().is_empty() {
            continue;
        }
        let known = prefixes.iter().any(|(prefix, _)| {
            key.strip_prefix(prefix.as_str())
                .is_some_and(|setting| EVERY_SETTING.contains(&setting))
        });
        if !known {
            let listed = if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            };
            return Err(format!(
                "{key} is not a setting of a provider in {PROVIDERS_VAR} (listed: {listed}); \
                 settings are OAUTH_RELAY_PROVIDER_<NAME>_{{{}}}",
                EVERY_SETTING.join(",")
            ));
        }
    }
    names.iter().map(|name| one(name, env, public)).collect()
}

fn one(name: &str, env: &Env, public: &str) -> Result<ProviderSettings, String> {
    let prefix = prefix_of(name);
    let get = |setting: &str| {
        env.get(&format!("{prefix}{setting}"))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let kind_var = format!("{prefix}KIND");
    let kind = match get("KIND") {
        None => {
            return Err(format!(
                "{kind_var} is required for provider {name} (oidc, google, github or microsoft)"
            ))
        }
        Some(k) => Kind::parse(&k).ok_or(format!(
            "{kind_var} must be oidc, google, github or microsoft, not {k:?}"
        ))?,
    };
    for setting in EVERY_SETTING {
        if get(setting).is_some()
            && !COMMON.contains(setting)
            && !kind.own_settings().contains(setting)
        {
            return Err(format!(
                "{prefix}{setting} does not apply to a {} provider ({name})",
                kind.name()
            ));
        }
    }
    let client_id =
        get("CLIENT_ID").ok_or(format!("{prefix}CLIENT_ID is required for provider {name}"))?;
    let client_secret = match (get("CLIENT_SECRET"), get("CLIENT_SECRET_FILE")) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "set {prefix}CLIENT_SECRET or {prefix}CLIENT_SECRET_FILE, not both"
            ))
        }
        (Some(secret), None) => Some(Secret::new(secret)),
        (None, Some(path)) => Some(Secret::new(read_secret_file(
            &path,
            &format!("{prefix}CLIENT_SECRET_FILE"),
        )?)),
        (None, None) => None,
    };
    let url = |setting: &str| {
        get(setting)
            .map(|v| checked_url(&v, &format!("{prefix}{setting}")))
            .transpose()
    };
    let scopes = |setting: &str| {
        get(setting).map(|v| {
            let list = split_scopes(&v);
            if list.is_empty() {
                Err(format!("{prefix}{setting}: no scopes given"))
            } else {
                Ok(list)
            }
        })
    };
    Ok(ProviderSettings {
        name: name.to_string(),
        kind,
        display_name: get("DISPLAY_NAME"),
        redirect_uri: format!("{public}/login/{name}/callback"),
        client_id,
        client_secret,
        scopes: scopes("SCOPES").transpose()?.unwrap_or_default(),
        allowed_scopes: scopes("ALLOWED_SCOPES").transpose()?,
        issuer: get("ISSUER")
            .map(|v| checked_issuer(&v, &format!("{prefix}ISSUER")))
            .transpose()?,
        authorize_url: url("AUTHORIZE_URL")?,
        token_url: url("TOKEN_URL")?,
        api_url: url("API_URL")?,
        login_url: url("LOGIN_URL")?,
        tenant: get("TENANT"),
        hosted_domain: get("HOSTED_DOMAIN").map(|d| d.to_ascii_lowercase()),
        source: Source::Variables(prefix),
    })
}

/// A mounted secret: the file's text without its final line break.
pub fn read_secret_file(path: &str, var: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{var} {path}: {e}"))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(format!("{var} {path}: the file is empty"));
    }
    Ok(secret)
}

/// An issuer identifier (OpenID Connect Discovery 3): an https URL (http on loopback, for
/// tests) without query or fragment, kept exactly as given (a trailing slash is part of it),
/// because the `iss` claim and the discovered `issuer` must equal it byte for byte.
pub fn checked_issuer(value: &str, var: &str) -> Result<String, String> {
    checked_url(value, var)?;
    if value.contains('#') {
        return Err(format!("{var} must not have a fragment"));
    }
    Ok(value.to_string())
}

/// Settings for unit tests of the providers' own rules.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    /// A provider `name` of `kind` with only a client id, as from `OAUTH_RELAY_PROVIDER_*`.
    pub fn settings(name: &str, kind: Kind) -> ProviderSettings {
        ProviderSettings {
            name: name.into(),
            kind,
            display_name: None,
            redirect_uri: format!("https://relay.example/login/{name}/callback"),
            client_id: "client".into(),
            client_secret: None,
            scopes: Vec::new(),
            allowed_scopes: None,
            issuer: None,
            authorize_url: None,
            token_url: None,
            api_url: None,
            login_url: None,
            tenant: None,
            hosted_domain: None,
            source: Source::Variables(prefix_of(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const PUBLIC: &str = "https://relay.example";

    #[test]
    fn providers_are_read_from_their_variables() {
        let e = env(&[
            ("OAUTH_RELAY_PROVIDER_CORP_EU_KIND", "oidc"),
            ("OAUTH_RELAY_PROVIDER_CORP_EU_CLIENT_ID", "corp-client"),
            (
                "OAUTH_RELAY_PROVIDER_CORP_EU_ISSUER",
                "https://login.corp.example/",
            ),
            (
                "OAUTH_RELAY_PROVIDER_CORP_EU_SCOPES",
                "openid  email openid",
            ),
            ("OAUTH_RELAY_PROVIDER_GITHUB_KIND", "github"),
            ("OAUTH_RELAY_PROVIDER_GITHUB_CLIENT_ID", "gh"),
            ("OAUTH_RELAY_PROVIDER_GITHUB_CLIENT_SECRET", "s"),
            ("OAUTH_RELAY_PROVIDER_GITHUB_DISPLAY_NAME", " "),
            ("UNRELATED", "x"),
        ]);
        let p = from_env(Some("corp-eu, github"), &e, PUBLIC).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "corp-eu");
        assert_eq!(p[0].kind, Kind::Oidc);
        assert_eq!(
            p[0].redirect_uri,
            "https://relay.example/login/corp-eu/callback"
        );
        assert_eq!(
            p[0].issuer.as_deref(),
            Some("https://login.corp.example/"),
            "the issuer is kept exactly"
        );
        assert_eq!(p[0].scopes, ["openid", "email"]);
        assert_eq!(p[0].allowed(), ["openid", "email"]);
        assert!(p[0].client_secret.is_none());
        assert_eq!(p[1].client_secret.as_ref().unwrap().expose(), "s");
        assert_eq!(p[1].display_name, None, "blank is unset");
        assert_eq!(p[1].var("API_URL"), "OAUTH_RELAY_PROVIDER_GITHUB_API_URL");
    }

    #[test]
    fn every_mistake_names_its_variable() {
        let base = [
            ("OAUTH_RELAY_PROVIDER_CORP_KIND", "oidc"),
            ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID", "c"),
            ("OAUTH_RELAY_PROVIDER_CORP_ISSUER", "https://idp.example"),
        ];
        // (OAUTH_RELAY_PROVIDERS, variables changed, the variable the error must name)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "corp",
                &[("OAUTH_RELAY_PROVIDER_CORP_KIND", "")],
                "OAUTH_RELAY_PROVIDER_CORP_KIND",
            ),
            (
                "corp",
                &[("OAUTH_RELAY_PROVIDER_CORP_KIND", "saml")],
                "OAUTH_RELAY_PROVIDER_CORP_KIND",
            ),
            (
                "corp",
                &[("OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID", "")],
                "OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID",
            ),
            (
                "corp",
                &[("OAUTH_RELAY_PROVIDER_CORP_ISSUER", "http://idp.example")],
                "OAUTH_RELAY_PROVIDER_CORP_ISSUER",
            ),
            (
                "corp",
                &[("OAUTH_RELAY_PROVIDER_CORP_TOKEN_URL", "not a url")],
                "OAUTH_RELAY_PROVIDER_CORP_TOKEN_URL",
            ),
            (
                "corp",
                &[("OAUTH_RELAY_PROVIDER_CORP_TENANT", "x")],
                "OAUTH_RELAY_PROVIDER_CORP_TENANT",
            ),
            (
                "corp",
                &[("OAUTH_RELAY_PROVIDER_CORP_CLIENTID", "x")],
                "OAUTH_RELAY_PROVIDER_CORP_CLIENTID",
            ),
            (
                "corp",
                &[("OAUTH_RELAY_PROVIDER_OTHER_KIND", "oidc")],
                "OAUTH_RELAY_PROVIDER_OTHER_KIND",
            ),
            (
                "corp",
                &[
                    ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_SECRET", "a"),
                    ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_SECRET_FILE", "/x"),
                ],
                "OAUTH_RELAY_PROVIDER_CORP_CLIENT_SECRET_FILE",
            ),
            (
                "corp",
                &[(
                    "OAUTH_RELAY_PROVIDER_CORP_CLIENT_SECRET_FILE",
                    "/nonexistent/secret",
                )],
                "OAUTH_RELAY_PROVIDER_CORP_CLIENT_SECRET_FILE",
            ),
            ("corp", &[("OAUTH_RELAY_PROVIDER_CORP_SCOPES", " ")], ""),
            ("Corp", &[], "OAUTH_RELAY_PROVIDERS"),
            ("corp,corp", &[], "OAUTH_RELAY_PROVIDERS"),
            ("corp_eu", &[], "OAUTH_RELAY_PROVIDERS"),
        ];
        for (list, changes, named) in cases {
            let mut e = env(&base);
            for (k, v) in *changes {
                e.insert(k.to_string(), v.to_string());
            }
            match from_env(Some(list), &e, PUBLIC) {
                Ok(_) if named.is_empty() => {}
                Ok(_) => panic!("{list} {changes:?} was accepted"),
                Err(message) => assert!(
                    !named.is_empty() && message.contains(named),
                    "{changes:?}: {message}"
                ),
            }
        }
    }

    #[test]
    fn a_secret_can_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("oauth-relay-secret-{}", std::process::id()));
        std::fs::write(&path, "from-a-file\n").unwrap();
        let e = env(&[
            ("OAUTH_RELAY_PROVIDER_GH_KIND", "github"),
            ("OAUTH_RELAY_PROVIDER_GH_CLIENT_ID", "c"),
            (
                "OAUTH_RELAY_PROVIDER_GH_CLIENT_SECRET_FILE",
                path.to_str().unwrap(),
            ),
        ]);
        let p = from_env(Some("gh"), &e, PUBLIC).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(p[0].client_secret.as_ref().unwrap().expose(), "from-a-file");
    }

    #[test]
    fn wk_settings_are_named_by_their_own_variables() {
        let s = ProviderSettings {
            name: M365.into(),
            kind: Kind::Microsoft,
            display_name: None,
            redirect_uri: String::new(),
            client_id: String::new(),
            client_secret: None,
            scopes: Vec::new(),
            allowed_scopes: None,
            issuer: None,
            authorize_url: None,
            token_url: None,
            api_url: None,
            login_url: None,
            tenant: None,
            hosted_domain: None,
            source: Source::Wk,
        };
        assert_eq!(s.var("TENANT"), "WK_M365_TENANT_ID");
        assert_eq!(s.var("API_URL"), "WK_M365_GRAPH_BASE_URL");
        assert_eq!(prefix_of("corp-eu"), "OAUTH_RELAY_PROVIDER_CORP_EU_");
    }
}
