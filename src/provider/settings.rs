//! One provider's settings: the ones every kind has (client id and secret, scopes, display name,
//! redirect URI), its kind's own (declared by the kind's file as [`Setting`]s and checked here
//! for form, so a URL is a URL before the kind's rules see it), and where they came from
//! ([`Source`]), so every message names the variable to fix. Reading them from the environment
//! is `providers_config.rs`'s; the kind's rules and defaults are its own file's (`Kind::check`).

use super::Kind;
use crate::secret::Secret;
use crate::urls::{checked_issuer, checked_url};
use std::collections::BTreeMap;

/// The start of every provider's variables: `OAUTH_RELAY_PROVIDER_<NAME>_<SETTING>`.
pub const PREFIX: &str = "OAUTH_RELAY_PROVIDER_";

/// The settings every kind reads (variable suffixes), in the order they are documented.
pub const COMMON: &[&str] = &[
    "KIND",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "CLIENT_SECRET_FILE",
    "SCOPES",
    "ALLOWED_SCOPES",
    "DISPLAY_NAME",
];

/// What a kind's own setting holds, checked before the kind's rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Any text.
    Text,
    /// An upstream URL (`urls::checked_url`: https, http only on loopback), kept without a
    /// trailing slash.
    Url,
    /// An issuer identifier (`urls::checked_issuer`), kept exactly as given.
    Issuer,
    /// Text compared without case (a domain name), kept lower-cased.
    Lowercase,
}

impl Form {
    /// `value` (trimmed, not blank) checked and normalized; an error names `var`.
    pub fn read(self, value: &str, var: &str) -> Result<String, String> {
        match self {
            Form::Text => Ok(value.to_string()),
            Form::Url => checked_url(value, var),
            Form::Issuer => checked_issuer(value, var),
            Form::Lowercase => Ok(value.to_ascii_lowercase()),
        }
    }
}

/// A setting a kind reads besides the common ones: its variable suffix and what it holds.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub name: &'static str,
    pub form: Form,
}

/// Where a provider's settings came from, to name the variable in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `OAUTH_RELAY_PROVIDER_<NAME>_...`, with this prefix.
    Variables(String),
    /// A kind's variables of an older version (Microsoft's `WK_M365_*`): the variable of each
    /// setting suffix that has one; any other is named as `OAUTH_RELAY_PROVIDER_<NAME>_...`.
    Legacy(&'static [(&'static str, &'static str)]),
}

/// One provider's settings, checked for form (URLs, names, secrets) as they are read and for
/// its kind's rules by its own file (`Kind::check`).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub name: String,
    pub kind: &'static Kind,
    pub display_name: Option<String>,
    /// Where the provider sends the browser back to: `{public}/login/{name}/callback` (a legacy
    /// provider's own path for one of older settings, such as `{public}/m365/callback`).
    pub redirect_uri: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// Requested when a session names none.
    pub scopes: Vec<String>,
    /// What a session may ask for; `None`: the same as `scopes`.
    pub allowed_scopes: Option<Vec<String>>,
    /// The kind's own settings by suffix (`ISSUER`, `TENANT`), checked for form; the kind's
    /// `check` fills in its defaults.
    pub own: BTreeMap<&'static str, String>,
    pub source: Source,
}

impl ProviderSettings {
    /// A provider `name` of `kind` with only a client id, its variables under
    /// `OAUTH_RELAY_PROVIDER_<NAME>_`.
    pub fn new(name: &str, kind: &'static Kind, redirect_uri: String, client_id: String) -> Self {
        ProviderSettings {
            name: name.to_string(),
            kind,
            display_name: None,
            redirect_uri,
            client_id,
            client_secret: None,
            scopes: Vec::new(),
            allowed_scopes: None,
            own: BTreeMap::new(),
            source: Source::Variables(prefix_of(name)),
        }
    }

    /// The variable that sets `setting` (a suffix such as `CLIENT_SECRET`) for this provider.
    pub fn var(&self, setting: &str) -> String {
        match &self.source {
            Source::Variables(prefix) => format!("{prefix}{setting}"),
            Source::Legacy(names) => match names.iter().find(|(s, _)| *s == setting) {
                Some((_, var)) => var.to_string(),
                None => format!("{}{setting}", prefix_of(&self.name)),
            },
        }
    }

    /// The scopes a session may ask for.
    pub fn allowed(&self) -> &[String] {
        self.allowed_scopes.as_deref().unwrap_or(&self.scopes)
    }

    /// The kind's own setting `setting`, when set (or defaulted by the kind).
    pub fn get(&self, setting: &str) -> Option<&str> {
        self.own.get(setting).map(String::as_str)
    }

    /// Sets the kind's own `setting` to `value` unless it is set.
    pub fn set_default(&mut self, setting: &'static str, value: &str) {
        self.own.entry(setting).or_insert_with(|| value.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_settings_are_named_by_their_own_variables() {
        let mut s = ProviderSettings::new(
            "m365",
            &crate::provider::microsoft::KIND,
            String::new(),
            String::new(),
        );
        s.source = Source::Legacy(&[
            ("TENANT", "WK_M365_TENANT_ID"),
            ("API_URL", "WK_M365_GRAPH_BASE_URL"),
        ]);
        assert_eq!(s.var("TENANT"), "WK_M365_TENANT_ID");
        assert_eq!(s.var("API_URL"), "WK_M365_GRAPH_BASE_URL");
        assert_eq!(
            s.var("DISPLAY_NAME"),
            "OAUTH_RELAY_PROVIDER_M365_DISPLAY_NAME"
        );
        assert_eq!(prefix_of("corp-eu"), "OAUTH_RELAY_PROVIDER_CORP_EU_");
    }

    #[test]
    fn forms_check_and_normalize() {
        assert_eq!(
            Form::Url.read("https://x.example/", "V").unwrap(),
            "https://x.example"
        );
        assert_eq!(
            Form::Issuer.read("https://x.example/", "V").unwrap(),
            "https://x.example/"
        );
        assert!(Form::Url
            .read("http://x.example", "V")
            .unwrap_err()
            .contains("V"));
        assert_eq!(
            Form::Lowercase.read("Example.COM", "V").unwrap(),
            "example.com"
        );
        assert_eq!(Form::Text.read("a b", "V").unwrap(), "a b");
    }
}
