//! Settings of kept connections: where they are kept (Redis with the rest of the state, else a
//! redb file), how many, who may ask for their access tokens, and the refresh protocol's
//! timings an operator may change (the others stay `Policy`'s defaults). Connections are a
//! broker feature: off when broker mode is.

use super::policy::Policy;
use crate::keyring::Keyring;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod defaults {
    /// Relative to the working directory, so `cargo run` keeps it beside the checkout; the
    /// container image sets `/var/lib/oauth-relay/connections.redb` (a volume).
    pub const FILE: &str = "oauth-relay-connections.redb";
    pub const MAX_KEPT: usize = 10_000;
    pub const KEEP_ALIVE_SECS: u64 = 30;
    /// How long a token request waits for a refresh when it names no `wait`.
    pub const TOKEN_WAIT_SECS: u64 = 30;
}

fn policy_secs(d: Duration) -> u64 {
    d.as_secs()
}

#[derive(Args, Debug, Clone)]
pub struct ConnectionsArgs {
    /// Where a single replica keeps connections (a redb file, created if missing; its
    /// directory must exist and be writable, and survive restarts: a volume in a container).
    /// Used in broker mode with OAUTH_RELAY_ENCRYPTION_KEY and without Redis (with Redis,
    /// connections live there). Default: oauth-relay-connections.redb in the working
    /// directory. Blank: no file (connections are refused).
    #[arg(long, env = "OAUTH_RELAY_CONNECTIONS_FILE")]
    pub connections_file: Option<String>,
    /// Most kept connections; past it a sign-in that asked to keep its grant fails
    /// (`unavailable`).
    #[arg(long, env = "OAUTH_RELAY_MAX_KEPT_CONNECTIONS", default_value_t = defaults::MAX_KEPT)]
    pub max_kept_connections: usize,
    /// Let the broker token stand for a connection's credential when asking for its access
    /// token (POST /connections/{id}/token). Off: only the credential handed out with the
    /// connection gets its tokens.
    #[arg(long, env = "OAUTH_RELAY_CONNECTIONS_BROKER_TOKEN")]
    pub connections_broker_token: bool,
    /// Seconds of life left at which an access token is refreshed on the next request (at most
    /// half of its lifetime), so callers rarely wait for a refresh.
    #[arg(long, env = "OAUTH_RELAY_CONNECTIONS_REFRESH_AHEAD_SECS",
          default_value_t = policy_secs(Policy::default().refresh_ahead))]
    pub connections_refresh_ahead_secs: u64,
    /// Seconds one presentation of a refresh token may take at the provider (a timeout after
    /// sending leaves its outcome unknown).
    #[arg(long, env = "OAUTH_RELAY_CONNECTIONS_REFRESH_TIMEOUT_SECS",
          default_value_t = policy_secs(Policy::default().refresh_timeout))]
    pub connections_refresh_timeout_secs: u64,
    /// Seconds after which a refresh whose replica stopped renewing it (every
    /// 1/10 of this) counts as its dead replica's: a one-time rotator's connection then needs
    /// a new sign-in; another provider's refresh token is presented again after the settle
    /// window. Keep it well above Redis hiccups and the replicas' clock skew.
    #[arg(long, env = "OAUTH_RELAY_CONNECTIONS_STALE_AFTER_SECS",
          default_value_t = policy_secs(Policy::default().stale_after))]
    pub connections_stale_after_secs: u64,
    /// Seconds a refresh whose outcome is unknown is left before the same refresh token is
    /// presented again (only to providers that keep old refresh tokens valid).
    #[arg(long, env = "OAUTH_RELAY_CONNECTIONS_SETTLE_SECS",
          default_value_t = policy_secs(Policy::default().settle))]
    pub connections_settle_secs: u64,
    /// Seconds between keep-alive passes: each refreshes the grants whose provider would let
    /// them die unused, and resolves refreshes left by dead replicas.
    #[arg(long, env = "OAUTH_RELAY_CONNECTIONS_KEEP_ALIVE_SECS", default_value_t = defaults::KEEP_ALIVE_SECS)]
    pub connections_keep_alive_secs: u64,
}

/// Where connections are kept.
#[derive(Debug, Clone)]
pub enum KeptIn {
    /// With the rest of the shared state (`OAUTH_RELAY_REDIS_URL`).
    Redis,
    /// A redb file, sealed with the keyring. `explicit`: the operator named the path.
    File {
        path: PathBuf,
        keys: Arc<Keyring>,
        explicit: bool,
    },
    /// Nowhere durable: `keep` is refused with these words (they name the setting to change).
    Nowhere(&'static str),
}

#[derive(Debug, Clone)]
pub struct ConnectionsConfig {
    pub kept_in: KeptIn,
    pub max: usize,
    pub broker_token: bool,
    pub policy: Policy,
    pub keep_alive: Duration,
}

/// The words of a refused `keep` without a key.
pub const NEEDS_A_STORE: &str = "Kept connections need a durable store: set OAUTH_RELAY_ENCRYPTION_KEY (connections are then kept in OAUTH_RELAY_CONNECTIONS_FILE) or OAUTH_RELAY_REDIS_URL";
/// The words of a refused `keep` with a blank file setting.
pub const NO_FILE: &str =
    "Kept connections are off: OAUTH_RELAY_CONNECTIONS_FILE is blank and there is no Redis";

impl ConnectionsConfig {
    /// `redis`: connections go to Redis; `key`: the encryption key's value, when set.
    pub fn from_args(
        a: ConnectionsArgs,
        redis: bool,
        key: Option<&str>,
    ) -> Result<ConnectionsConfig, String> {
        let kept_in = match (redis, key, a.connections_file) {
            (true, _, _) => KeptIn::Redis,
            (false, None, _) => KeptIn::Nowhere(NEEDS_A_STORE),
            (false, Some(_), Some(path)) if path.trim().is_empty() => KeptIn::Nowhere(NO_FILE),
            (false, Some(key), path) => KeptIn::File {
                explicit: path.is_some(),
                path: PathBuf::from(path.unwrap_or_else(|| defaults::FILE.to_string())),
                keys: Arc::new(Keyring::parse(key)?),
            },
        };
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(format!("{name} must be at least 1"))
            } else {
                Ok(Duration::from_secs(v))
            }
        };
        let stale_after = positive(
            "OAUTH_RELAY_CONNECTIONS_STALE_AFTER_SECS",
            a.connections_stale_after_secs,
        )?;
        let policy = Policy {
            refresh_ahead: Duration::from_secs(a.connections_refresh_ahead_secs),
            refresh_timeout: positive(
                "OAUTH_RELAY_CONNECTIONS_REFRESH_TIMEOUT_SECS",
                a.connections_refresh_timeout_secs,
            )?,
            // Ten beats in a stale window: a few lost ones do not make a live replica look dead.
            heartbeat: (stale_after / 10).max(Duration::from_millis(100)),
            stale_after,
            settle: Duration::from_secs(a.connections_settle_secs),
            ..Policy::default()
        };
        if a.max_kept_connections == 0 {
            return Err("OAUTH_RELAY_MAX_KEPT_CONNECTIONS must be at least 1".into());
        }
        Ok(ConnectionsConfig {
            kept_in,
            max: a.max_kept_connections,
            broker_token: a.connections_broker_token,
            policy,
            keep_alive: positive(
                "OAUTH_RELAY_CONNECTIONS_KEEP_ALIVE_SECS",
                a.connections_keep_alive_secs,
            )?,
        })
    }

    /// Whether connections are kept in the file (so the encryption key is used without Redis).
    pub fn uses_file(&self) -> bool {
        matches!(self.kept_in, KeptIn::File { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: ConnectionsArgs,
    }

    fn parse(args: &[&str], redis: bool, key: Option<&str>) -> Result<ConnectionsConfig, String> {
        let mut argv = vec!["x"];
        argv.extend_from_slice(args);
        ConnectionsConfig::from_args(Cli::try_parse_from(argv).unwrap().a, redis, key)
    }

    const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn connections_go_where_the_state_is_durable() {
        assert!(matches!(
            parse(&[], true, Some(KEY)).unwrap().kept_in,
            KeptIn::Redis
        ));
        let c = parse(&[], false, Some(KEY)).unwrap();
        match &c.kept_in {
            KeptIn::File { path, explicit, .. } => {
                assert_eq!(path, &PathBuf::from(defaults::FILE));
                assert!(!explicit);
            }
            other => panic!("{other:?}"),
        }
        assert!(c.uses_file());
        match parse(&[], false, None).unwrap().kept_in {
            KeptIn::Nowhere(words) => assert!(words.contains("OAUTH_RELAY_ENCRYPTION_KEY")),
            other => panic!("{other:?}"),
        }
        match parse(&["--connections-file", ""], false, Some(KEY))
            .unwrap()
            .kept_in
        {
            KeptIn::Nowhere(words) => assert!(words.contains("OAUTH_RELAY_CONNECTIONS_FILE")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["--connections-file", "/x/c.redb"], false, Some(KEY))
                .unwrap()
                .kept_in,
            KeptIn::File { explicit: true, .. }
        ));
    }

    #[test]
    fn the_timings_come_from_the_policy_unless_set() {
        let c = parse(&[], false, None).unwrap();
        let d = Policy::default();
        assert_eq!(
            (
                c.policy.refresh_ahead,
                c.policy.stale_after,
                c.policy.settle
            ),
            (d.refresh_ahead, d.stale_after, d.settle)
        );
        assert_eq!(c.policy.heartbeat, d.heartbeat);
        let c = parse(&["--connections-stale-after-secs", "3"], false, None).unwrap();
        assert_eq!(c.policy.heartbeat, Duration::from_millis(300));
        for zero in [
            "--connections-stale-after-secs",
            "--connections-refresh-timeout-secs",
            "--connections-keep-alive-secs",
            "--max-kept-connections",
        ] {
            assert!(parse(&[zero, "0"], false, None).is_err(), "{zero}");
        }
    }
}
