//! The identity providers the broker signs people in with, from `OAUTH_RELAY_PROVIDERS` and the
//! `OAUTH_RELAY_PROVIDER_<NAME>_*` variables of each. The variable names depend on the provider
//! names, so clap cannot declare them: `from_env` reads them from a map that `main` fills from
//! the process environment once at start-up (tests hand in their own). Which kinds there are
//! and which settings each reads come from the kinds' registry (`provider::KINDS`); this file
//! names no kind. Every problem stops start-up with a message naming the variable; nothing here
//! touches the network (discovery happens when the providers are built, `provider::build`).

/// `corp-eu` -> `OAUTH_RELAY_PROVIDER_CORP_EU_` (its home is `provider/settings.rs`).
pub use crate::provider::settings::prefix_of;
use crate::provider::settings::{split_scopes, ProviderSettings, COMMON, PREFIX};
use crate::provider::{self, every_setting, kind_names};
use crate::secret::Secret;
use std::collections::BTreeMap;

/// Environment variables by name.
pub type Env = BTreeMap<String, String>;

pub const PROVIDERS_VAR: &str = "OAUTH_RELAY_PROVIDERS";
/// The provider the `WK_M365_*` variables define, and the one `/m365/*` serves (its home is
/// `provider/microsoft.rs`; named here for the routes and the CLI).
pub const M365: &str = crate::provider::microsoft::WK_NAME;

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
    let every = every_setting();
    for (key, value) in env {
        if !key.starts_with(PREFIX) || value.trim().is_empty() {
            continue;
        }
        let known = prefixes.iter().any(|(prefix, _)| {
            key.strip_prefix(prefix.as_str())
                .is_some_and(|setting| every.contains(&setting))
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
                every.join(",")
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
                "{kind_var} is required for provider {name} ({})",
                kind_names()
            ))
        }
        Some(k) => {
            provider::kind(&k).ok_or(format!("{kind_var} must be {}, not {k:?}", kind_names()))?
        }
    };
    for setting in every_setting() {
        if get(setting).is_some()
            && !COMMON.contains(&setting)
            && !kind.settings.iter().any(|s| s.name == setting)
        {
            return Err(format!(
                "{prefix}{setting} does not apply to a {} provider ({name})",
                kind.name
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
    let mut s = ProviderSettings::new(
        name,
        kind,
        format!("{public}/login/{name}/callback"),
        client_id,
    );
    s.display_name = get("DISPLAY_NAME");
    s.client_secret = client_secret;
    s.scopes = scopes("SCOPES").transpose()?.unwrap_or_default();
    s.allowed_scopes = scopes("ALLOWED_SCOPES").transpose()?;
    // The kind's own settings, each checked for its form (a URL is a URL) in the kind's order.
    for setting in kind.settings {
        if let Some(value) = get(setting.name) {
            let value = setting
                .form
                .read(&value, &format!("{prefix}{}", setting.name))?;
            s.own.insert(setting.name, value);
        }
    }
    Ok(s)
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
        assert_eq!(p[0].kind.name, "oidc");
        assert_eq!(
            p[0].redirect_uri,
            "https://relay.example/login/corp-eu/callback"
        );
        assert_eq!(
            p[0].get("ISSUER"),
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
}
