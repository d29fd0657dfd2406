//! Broker settings, validated. Broker mode is on when any of the public URL, the broker token,
//! `WK_M365_CLIENT_ID` or `OAUTH_RELAY_PROVIDERS` is set (to something other than blanks); then
//! the public URL, the broker token and at least one provider must be set and valid, and the
//! error says which variable turned broker mode on. The general names (`OAUTH_RELAY_PUBLIC_URL`,
//! `OAUTH_RELAY_BROKER_TOKEN`) and the Workit names (`WK_PUBLIC_BASE_URL`,
//! `WK_M365_BROKER_TOKEN`) both work. The providers themselves are read by
//! `providers_config.rs` (and Microsoft's `WK_M365_*` ones by `provider/microsoft.rs`, whose
//! flags are flattened in here) and checked by their own files (`provider::check_settings`).

use crate::broker::return_url::{self, Origin};
use crate::provider::microsoft::WkArgs;
use crate::provider::settings::ProviderSettings;
use crate::providers_config::{self, Env};
use crate::secret::Secret;
use clap::Args;

/// URLs are checked by `urls.rs`; named here too for the settings that check theirs this way.
pub use crate::urls::checked_url;

pub const DEFAULT_EXCHANGE_TIMEOUT_SECS: u64 = 20;
pub const DEFAULT_MAX_EXCHANGES: usize = 96;

#[derive(Args, Debug, Clone, Default)]
pub struct BrokerArgs {
    /// Public HTTPS base URL of this service; providers redirect to BASE/login/NAME/callback
    /// (Microsoft 365 from WK_M365_*: BASE/m365/callback). Setting it (or a provider or the
    /// broker token) turns broker mode on.
    #[arg(long, env = "OAUTH_RELAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The same as --public-url (its Workit name).
    #[arg(long, env = "WK_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Bearer secret callers present to create sessions and fetch tokens.
    #[arg(long, env = "OAUTH_RELAY_BROKER_TOKEN", hide_env_values = true)]
    pub broker_token: Option<String>,
    /// The same as --broker-token (its Workit name).
    #[arg(long, env = "WK_M365_BROKER_TOKEN", hide_env_values = true)]
    pub m365_broker_token: Option<String>,
    /// Identity providers by name (comma-separated), each configured by
    /// OAUTH_RELAY_PROVIDER_<NAME>_* variables (see docs/providers/README.md).
    #[arg(long, env = "OAUTH_RELAY_PROVIDERS")]
    pub providers: Option<String>,
    #[command(flatten)]
    pub m365: WkArgs,
    /// Let /status and /token answer with the handle alone, without the broker token
    /// (for older clients; the handle is then the only secret).
    #[arg(long, env = "OAUTH_RELAY_BROKER_HANDLE_ONLY")]
    pub broker_handle_only: bool,
    /// Total seconds for the code exchange and the identity checks of one sign-in.
    #[arg(long, env = "OAUTH_RELAY_EXCHANGE_TIMEOUT_SECS", default_value_t = DEFAULT_EXCHANGE_TIMEOUT_SECS)]
    pub exchange_timeout_secs: u64,
    /// Origins (comma-separated, e.g. https://chat.example.com) a session's return_url may
    /// point to: the success page links back there. Unset: sessions cannot carry a return_url.
    #[arg(long, env = "OAUTH_RELAY_RETURN_URL_ORIGINS")]
    pub return_url_origins: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub public_base_url: String,
    pub broker_token: Secret,
    pub handle_only: bool,
    pub exchange_timeout: std::time::Duration,
    pub max_exchanges: usize,
    /// Where a session's `return_url` may point (`OAUTH_RELAY_RETURN_URL_ORIGINS`); empty: no
    /// session may carry one.
    pub return_url_origins: Vec<Origin>,
    /// In the order configured: `m365` from `WK_M365_*` first, then `OAUTH_RELAY_PROVIDERS`.
    pub providers: Vec<ProviderSettings>,
}

/// One setting under two names: blank counts as unset, and two different values are refused.
fn either(
    general: Option<String>,
    general_name: &str,
    wk: Option<String>,
    wk_name: &str,
) -> Result<Option<(String, &'static str)>, String> {
    let clean = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    match (clean(general), clean(wk)) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{general_name} and {wk_name} are two names of one setting and are set differently: \
             set one of them"
        )),
        (Some(a), _) => Ok(Some((a, "general"))),
        (None, Some(b)) => Ok(Some((b, "wk"))),
        (None, None) => Ok(None),
    }
}

impl BrokerConfig {
    /// `Ok(None)` when broker mode is off. `env` holds the process environment (for the
    /// `OAUTH_RELAY_PROVIDER_<NAME>_*` variables).
    pub fn from_args(a: BrokerArgs, env: &Env) -> Result<Option<BrokerConfig>, String> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let switches = [
            ("OAUTH_RELAY_PUBLIC_URL", set(&a.public_url)),
            ("WK_PUBLIC_BASE_URL", set(&a.public_base_url)),
            ("OAUTH_RELAY_BROKER_TOKEN", set(&a.broker_token)),
            (WkArgs::DEFINED_BY, a.m365.is_set()),
            ("WK_M365_BROKER_TOKEN", set(&a.m365_broker_token)),
            (providers_config::PROVIDERS_VAR, set(&a.providers)),
        ];
        let on_because: Vec<&str> = switches
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
        if on_because.is_empty() {
            return Ok(None);
        }
        let on_because = match on_because.split_last() {
            Some((last, [])) => format!("{last} is set"),
            Some((last, rest)) => format!("{} and {last} are set", rest.join(", ")),
            None => unreachable!("checked above"),
        };
        let needs = |name: &str| {
            format!(
                "broker mode is on because {on_because}, and it also needs {name} \
                 (unset them all to turn broker mode off)"
            )
        };
        let (public, public_from) = either(
            a.public_url,
            "OAUTH_RELAY_PUBLIC_URL",
            a.public_base_url,
            "WK_PUBLIC_BASE_URL",
        )?
        .ok_or_else(|| needs("WK_PUBLIC_BASE_URL (or OAUTH_RELAY_PUBLIC_URL)"))?;
        let public_var = if public_from == "general" {
            "OAUTH_RELAY_PUBLIC_URL"
        } else {
            "WK_PUBLIC_BASE_URL"
        };
        let public = checked_url(&public, public_var)?;
        if !a.m365.is_set() && !set(&a.providers) {
            return Err(needs(&format!(
                "{} or {} (at least one identity provider)",
                WkArgs::DEFINED_BY,
                providers_config::PROVIDERS_VAR
            )));
        }
        let (token, token_from) = either(
            a.broker_token,
            "OAUTH_RELAY_BROKER_TOKEN",
            a.m365_broker_token,
            "WK_M365_BROKER_TOKEN",
        )?
        .ok_or_else(|| needs("WK_M365_BROKER_TOKEN (or OAUTH_RELAY_BROKER_TOKEN)"))?;
        if token.len() < 16 {
            let var = if token_from == "general" {
                "OAUTH_RELAY_BROKER_TOKEN"
            } else {
                "WK_M365_BROKER_TOKEN"
            };
            return Err(format!("{var} must be at least 16 characters"));
        }
        let mut providers: Vec<ProviderSettings> = a.m365.settings(&public)?.into_iter().collect();
        for p in providers_config::from_env(a.providers.as_deref(), env, &public)? {
            if providers
                .iter()
                .any(|q: &ProviderSettings| q.name == p.name)
            {
                return Err(format!(
                    "the provider {} is defined twice: by {} and in {}",
                    p.name,
                    WkArgs::DEFINED_BY,
                    providers_config::PROVIDERS_VAR
                ));
            }
            providers.push(p);
        }
        if providers.is_empty() {
            return Err(format!(
                "{} lists no provider",
                providers_config::PROVIDERS_VAR
            ));
        }
        for p in &mut providers {
            crate::provider::check_settings(p)?;
        }
        if a.exchange_timeout_secs == 0 {
            return Err("OAUTH_RELAY_EXCHANGE_TIMEOUT_SECS must be at least 1".into());
        }
        let return_url_origins =
            return_url::parse_origins(a.return_url_origins.as_deref().unwrap_or(""))?;
        Ok(Some(BrokerConfig {
            public_base_url: public,
            broker_token: Secret::new(token),
            handle_only: a.broker_handle_only,
            exchange_timeout: std::time::Duration::from_secs(a.exchange_timeout_secs),
            max_exchanges: DEFAULT_MAX_EXCHANGES,
            return_url_origins,
            providers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wk() -> BrokerArgs {
        BrokerArgs {
            exchange_timeout_secs: DEFAULT_EXCHANGE_TIMEOUT_SECS,
            ..BrokerArgs::default()
        }
    }

    /// The broker's settings with the Microsoft 365 provider of `WK_M365_CLIENT_ID`.
    fn m365(client_id: &str) -> WkArgs {
        WkArgs {
            m365_client_id: Some(client_id.into()),
            ..WkArgs::default()
        }
    }

    fn config(a: BrokerArgs) -> Result<Option<BrokerConfig>, String> {
        BrokerConfig::from_args(a, &Env::new())
    }

    #[test]
    fn broker_mode_needs_every_required_setting() {
        assert!(config(BrokerArgs::default()).unwrap().is_none());
        let partial = BrokerArgs {
            public_base_url: Some("https://relay.example".into()),
            ..wk()
        };
        let e = config(partial).unwrap_err();
        assert!(
            e.contains("needs WK_M365_CLIENT_ID or OAUTH_RELAY_PROVIDERS")
                && e.contains("because WK_PUBLIC_BASE_URL is set"),
            "{e}"
        );
        let partial = BrokerArgs {
            m365: m365("client"),
            m365_broker_token: Some("0123456789abcdef0123".into()),
            ..wk()
        };
        let e = config(partial).unwrap_err();
        assert!(
            e.contains("needs WK_PUBLIC_BASE_URL")
                && e.contains("because WK_M365_CLIENT_ID and WK_M365_BROKER_TOKEN are set"),
            "{e}"
        );
        let partial = BrokerArgs {
            public_url: Some("https://relay.example".into()),
            providers: Some("corp".into()),
            ..wk()
        };
        let e = config(partial).unwrap_err();
        assert!(
            e.contains("needs WK_M365_BROKER_TOKEN (or OAUTH_RELAY_BROKER_TOKEN)")
                && e.contains("because OAUTH_RELAY_PUBLIC_URL and OAUTH_RELAY_PROVIDERS are set"),
            "{e}"
        );
        // Blank values (an empty variable in a manifest) do not turn broker mode on.
        let blank = BrokerArgs {
            public_base_url: Some("".into()),
            m365: m365("  "),
            ..BrokerArgs::default()
        };
        assert!(config(blank).unwrap().is_none());
    }

    #[test]
    fn both_spellings_work_and_must_agree() {
        let token = "0123456789abcdef0123";
        let general = config(BrokerArgs {
            public_url: Some("https://relay.example/".into()),
            broker_token: Some(token.into()),
            m365: m365("client"),
            ..wk()
        })
        .unwrap()
        .unwrap();
        let workit = config(BrokerArgs {
            public_base_url: Some("https://relay.example".into()),
            m365_broker_token: Some(token.into()),
            m365: m365("client"),
            ..wk()
        })
        .unwrap()
        .unwrap();
        for c in [&general, &workit] {
            assert_eq!(c.public_base_url, "https://relay.example");
            assert!(c.broker_token.matches(token));
            assert_eq!(c.providers[0].name, "m365");
            assert_eq!(
                c.providers[0].redirect_uri,
                "https://relay.example/m365/callback"
            );
        }
        let e = config(BrokerArgs {
            public_url: Some("https://a.example".into()),
            public_base_url: Some("https://b.example".into()),
            broker_token: Some(token.into()),
            m365: m365("client"),
            ..wk()
        })
        .unwrap_err();
        assert!(
            e.contains("OAUTH_RELAY_PUBLIC_URL") && e.contains("WK_PUBLIC_BASE_URL"),
            "{e}"
        );
        let e = config(BrokerArgs {
            public_url: Some("https://a.example".into()),
            broker_token: Some("short".into()),
            m365: m365("client"),
            ..wk()
        })
        .unwrap_err();
        assert!(e.contains("OAUTH_RELAY_BROKER_TOKEN"), "{e}");
    }

    #[test]
    fn return_url_origins_are_read_and_checked() {
        let with = |origins: &str| {
            config(BrokerArgs {
                public_url: Some("https://relay.example".into()),
                broker_token: Some("0123456789abcdef0123".into()),
                m365: m365("client"),
                return_url_origins: Some(origins.into()),
                ..wk()
            })
        };
        let c = with("https://chat.example.com, https://teams.example.com:8443")
            .unwrap()
            .unwrap();
        assert_eq!(c.return_url_origins.len(), 2);
        assert!(with("").unwrap().unwrap().return_url_origins.is_empty());
        let e = with("https://chat.example.com,chat.example.com").unwrap_err();
        assert!(e.contains("OAUTH_RELAY_RETURN_URL_ORIGINS"), "{e}");
    }

    #[test]
    fn m365_cannot_be_defined_twice() {
        let env: Env = [
            ("OAUTH_RELAY_PROVIDER_M365_KIND", "microsoft"),
            ("OAUTH_RELAY_PROVIDER_M365_CLIENT_ID", "other"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let e = BrokerConfig::from_args(
            BrokerArgs {
                public_url: Some("https://a.example".into()),
                broker_token: Some("0123456789abcdef0123".into()),
                m365: m365("client"),
                providers: Some("m365".into()),
                ..wk()
            },
            &env,
        )
        .unwrap_err();
        assert!(e.contains("defined twice"), "{e}");
    }
}
