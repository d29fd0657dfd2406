//! Broker settings (the Workit `WK_*` variables), validated. Broker mode is on when any of the
//! required variables is set (to something other than blanks); then all of them must be set and
//! valid, and the error says which variable turned broker mode on.

use crate::secret::Secret;
use clap::Args;

pub const DEFAULT_SCOPES: &str = "offline_access User.Read Mail.Read Calendars.Read";
pub const DEFAULT_LOGIN_BASE: &str = "https://login.microsoftonline.com";
pub const DEFAULT_GRAPH_BASE: &str = "https://graph.microsoft.com";
pub const DEFAULT_TENANT: &str = "organizations";
pub const DEFAULT_EXCHANGE_TIMEOUT_SECS: u64 = 20;
pub const DEFAULT_MAX_EXCHANGES: usize = 96;

#[derive(Args, Debug, Clone, Default)]
pub struct BrokerArgs {
    /// Public HTTPS base URL of this service; Microsoft redirects to BASE/m365/callback.
    /// Setting it (or the client id or broker token) turns broker mode on.
    #[arg(long, env = "WK_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Application (client) id of the Microsoft Entra app registration.
    #[arg(long, env = "WK_M365_CLIENT_ID")]
    pub m365_client_id: Option<String>,
    /// Tenant id (a GUID pins sign-ins to that tenant) or `organizations`.
    #[arg(long, env = "WK_M365_TENANT_ID", default_value = DEFAULT_TENANT)]
    pub m365_tenant_id: String,
    /// Client secret of a confidential ("Web") app registration; unset: public client (PKCE only).
    #[arg(long, env = "WK_M365_CLIENT_SECRET", hide_env_values = true)]
    pub m365_client_secret: Option<String>,
    /// Bearer secret callers present to create sessions and fetch tokens.
    #[arg(long, env = "WK_M365_BROKER_TOKEN", hide_env_values = true)]
    pub broker_token: Option<String>,
    /// Microsoft identity platform base URL (national clouds, tests).
    #[arg(long, env = "WK_M365_LOGIN_BASE_URL", default_value = DEFAULT_LOGIN_BASE)]
    pub m365_login_base_url: String,
    /// Microsoft Graph base URL (national clouds, tests).
    #[arg(long, env = "WK_M365_GRAPH_BASE_URL", default_value = DEFAULT_GRAPH_BASE)]
    pub m365_graph_base_url: String,
    /// Space-separated scopes; only read-only Graph scopes are accepted.
    #[arg(long, env = "WK_M365_SCOPES", default_value = DEFAULT_SCOPES)]
    pub m365_scopes: String,
    /// Let /status and /token answer with the handle alone, without the broker token
    /// (for older clients; the handle is then the only secret).
    #[arg(long, env = "OAUTH_RELAY_BROKER_HANDLE_ONLY")]
    pub broker_handle_only: bool,
    /// Total seconds for the code exchange and the Graph check of one sign-in.
    #[arg(long, env = "OAUTH_RELAY_EXCHANGE_TIMEOUT_SECS", default_value_t = DEFAULT_EXCHANGE_TIMEOUT_SECS)]
    pub exchange_timeout_secs: u64,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub public_base_url: String,
    pub redirect_uri: String,
    pub client_id: String,
    pub tenant: String,
    pub client_secret: Option<Secret>,
    pub broker_token: Secret,
    pub login_base_url: String,
    pub graph_base_url: String,
    pub scopes: Vec<String>,
    pub handle_only: bool,
    pub exchange_timeout: std::time::Duration,
    pub max_exchanges: usize,
}

impl BrokerConfig {
    /// `Ok(None)` when broker mode is off.
    pub fn from_args(a: BrokerArgs) -> Result<Option<BrokerConfig>, String> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let switches = [
            ("WK_PUBLIC_BASE_URL", set(&a.public_base_url)),
            ("WK_M365_CLIENT_ID", set(&a.m365_client_id)),
            ("WK_M365_BROKER_TOKEN", set(&a.broker_token)),
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
        let required = |v: Option<String>, name: &str| {
            v.map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or(format!(
                    "broker mode is on because {on_because}, and it also needs {name} \
                     (unset all three to turn broker mode off)"
                ))
        };
        let public = required(a.public_base_url, "WK_PUBLIC_BASE_URL")?;
        let public = checked_url(&public, "WK_PUBLIC_BASE_URL")?;
        let client_id = required(a.m365_client_id, "WK_M365_CLIENT_ID")?;
        let token = required(a.broker_token, "WK_M365_BROKER_TOKEN")?;
        if token.len() < 16 {
            return Err("WK_M365_BROKER_TOKEN must be at least 16 characters".into());
        }
        let tenant = a.m365_tenant_id.trim().to_string();
        if tenant.is_empty()
            || !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
        {
            return Err(
                "WK_M365_TENANT_ID must be a tenant id, a domain or `organizations`".into(),
            );
        }
        let scopes =
            read_only_scopes(&a.m365_scopes).map_err(|e| format!("WK_M365_SCOPES: {e}"))?;
        if !scopes.iter().any(|s| s == "offline_access") {
            return Err(
                "WK_M365_SCOPES must include offline_access (the broker hands out a refresh token)"
                    .into(),
            );
        }
        if a.exchange_timeout_secs == 0 {
            return Err("OAUTH_RELAY_EXCHANGE_TIMEOUT_SECS must be at least 1".into());
        }
        Ok(Some(BrokerConfig {
            redirect_uri: format!("{public}/m365/callback"),
            public_base_url: public,
            client_id,
            tenant,
            client_secret: a
                .m365_client_secret
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            broker_token: Secret::new(token),
            login_base_url: checked_url(&a.m365_login_base_url, "WK_M365_LOGIN_BASE_URL")?,
            graph_base_url: checked_url(&a.m365_graph_base_url, "WK_M365_GRAPH_BASE_URL")?,
            scopes,
            handle_only: a.broker_handle_only,
            exchange_timeout: std::time::Duration::from_secs(a.exchange_timeout_secs),
            max_exchanges: DEFAULT_MAX_EXCHANGES,
        }))
    }

    /// A tenant id pins sign-ins to that tenant; `organizations`, `common` or a domain do not
    /// (a domain cannot be compared with the token's `tid` GUID).
    pub fn pinned_tenant(&self) -> Option<&str> {
        is_guid(&self.tenant).then_some(self.tenant.as_str())
    }
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// HTTPS, or plain HTTP on a loopback host (local testing). Returned without a trailing slash.
pub fn checked_url(value: &str, name: &str) -> Result<String, String> {
    let value = value.trim().trim_end_matches('/');
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("{name} is not a valid URL: {value:?}"))?;
    let host = uri.host().ok_or(format!("{name} has no host: {value:?}"))?;
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1");
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        _ => {
            return Err(format!(
            "{name} must be an https:// URL (http:// only on 127.0.0.1 or localhost): {value:?}"
        ))
        }
    }
    if uri.query().is_some() {
        return Err(format!("{name} must not have a query string"));
    }
    Ok(value.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn urls_must_be_https_except_on_loopback() {
        assert_eq!(
            checked_url("https://x.example/", "V").unwrap(),
            "https://x.example"
        );
        assert!(checked_url("http://127.0.0.1:8000", "V").is_ok());
        assert!(checked_url("http://localhost:1", "V").is_ok());
        let e = checked_url("http://relay.example", "WK_PUBLIC_BASE_URL").unwrap_err();
        assert!(e.contains("WK_PUBLIC_BASE_URL"));
        assert!(checked_url("ftp://x", "V").is_err());
        assert!(checked_url("not a url", "V").is_err());
    }

    #[test]
    fn broker_mode_needs_every_required_setting() {
        assert!(BrokerConfig::from_args(BrokerArgs::default())
            .unwrap()
            .is_none());
        let partial = BrokerArgs {
            public_base_url: Some("https://relay.example".into()),
            m365_tenant_id: DEFAULT_TENANT.into(),
            m365_scopes: DEFAULT_SCOPES.into(),
            ..BrokerArgs::default()
        };
        let e = BrokerConfig::from_args(partial).unwrap_err();
        assert!(
            e.contains("needs WK_M365_CLIENT_ID")
                && e.contains("because WK_PUBLIC_BASE_URL is set"),
            "{e}"
        );
        let partial = BrokerArgs {
            m365_client_id: Some("client".into()),
            broker_token: Some("0123456789abcdef0123".into()),
            m365_tenant_id: DEFAULT_TENANT.into(),
            m365_scopes: DEFAULT_SCOPES.into(),
            ..BrokerArgs::default()
        };
        let e = BrokerConfig::from_args(partial).unwrap_err();
        assert!(
            e.contains("needs WK_PUBLIC_BASE_URL")
                && e.contains("because WK_M365_CLIENT_ID and WK_M365_BROKER_TOKEN are set"),
            "{e}"
        );
        // Blank values (an empty variable in a manifest) do not turn broker mode on.
        let blank = BrokerArgs {
            public_base_url: Some("".into()),
            m365_client_id: Some("  ".into()),
            ..BrokerArgs::default()
        };
        assert!(BrokerConfig::from_args(blank).unwrap().is_none());
    }

    #[test]
    fn guid_tenants_are_pinned() {
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("organizations"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
    }
}
