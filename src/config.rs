//! Command line and environment, parsed by clap and validated into `Config`. Every default is
//! in `defaults` (and `impl Default for Config`); handlers never read the environment. The
//! variables whose names depend on other settings (`OAUTH_RELAY_PROVIDER_<NAME>_*`) come in a
//! map (`providers_config::Env`) that `main` fills once from the process environment.

use crate::logging::Level;
use crate::secret::Secret;
use crate::server;
use clap::{Args, Parser, Subcommand};
use std::time::Duration;

pub mod defaults {
    pub const HOST: &str = "0.0.0.0";
    pub const PORT: u16 = 8000;
    pub const TTL_SECS: u64 = 600;
    pub const MAX_PENDING: usize = 100_000;
    pub const MAX_URL_BYTES: usize = 8 * 1024;
    pub const MAX_WAIT_SECS: u64 = 60;
    pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
    pub const MAX_SESSIONS: usize = 2_000;
    pub const MAX_WAITERS: usize = 1_024;
    pub const MAX_CONNECTIONS: usize = 1_024;
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;
    pub const MAX_HEADERS: usize = 64;
    pub const MAX_BODY_BYTES: usize = 4 * 1024;
    /// Room for every broker code exchange (96 at most) plus Redis calls.
    pub const BLOCKING_THREADS: usize = 128;
    pub const READ_TIMEOUT_SECS: u64 = 10;
    pub const SHUTDOWN_GRACE_SECS: u64 = 5;
    pub const LOG_LEVEL: &str = "info";
    pub const SERVER_URL: &str = "http://127.0.0.1:8000";
    pub const REDIS_PREFIX: &str = "oauth-relay:";
    pub const REDIS_TIMEOUT_MS: u64 = 500;
}

#[derive(Parser, Debug)]
#[command(
    name = "oauth-relay",
    version,
    about = "Relays OAuth redirects to programs that cannot receive them.",
    long_about = "Relays OAuth redirects to programs that cannot receive them. Without a subcommand, serves.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the relay (the default).
    Serve(Box<ServeArgs>),
    /// Wait for the callback of STATE on a running relay and print it as JSON.
    ///
    /// Exit status: 0 when a code arrived; 2 when the callback came without one (the provider
    /// sent an error, or nothing at all); 1 on timeout, a bad --server, or any other failure.
    Wait(WaitArgs),
    /// Register STATE with the hash of a new random retrieval secret, and print the secret.
    ///
    /// Only a retrieval presenting the secret (`wait --retrieval-secret-env` or
    /// `--retrieval-secret-stdin`, or the X-Retrieval-Secret header) then gets the callback of
    /// STATE. Prints the secret alone on stdout. Exit status: 0 when registered, 1 otherwise
    /// (409: the state is already registered or used).
    Register(RegisterArgs),
    /// Ask a broker for a one-click login link for EMAIL (Microsoft 365 unless --provider says
    /// otherwise) and print it.
    ///
    /// Prints `login_url: ...`, `expected_email: ...` and `expires_at: ...` lines at once; with
    /// --wait, then waits for the person to sign in and prints the tokens as one JSON line.
    /// Exit status: 0 on success, 2 when the sign-in failed (reason on stderr), 1 otherwise.
    LoginLink(LoginLinkArgs),
    /// Exit 0 when the local server answers /health, 1 otherwise (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// Run a deployment's validation checklist against its public and internal URLs and print
    /// it, with a fix for each failed item.
    ///
    /// Checks the probes, the listener split, session creation without and with the broker
    /// token, and for every provider the login link's redirect (redirect URI, PKCE, state,
    /// scopes) and what the service reaches at the provider; completion events with
    /// --expect-events. Exit status: 0 when every item passed, 1 otherwise.
    CheckDeployment(crate::check::CheckArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "OAUTH_CALLBACK_HOST", default_value = defaults::HOST)]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "OAUTH_CALLBACK_PORT", default_value_t = defaults::PORT)]
    pub port: u16,
    /// A second listener, IP:PORT (e.g. 0.0.0.0:8001), for what programs call (/api/...,
    /// session creation, /status, /token, /metrics); the main listener then serves only what
    /// browsers and probes need (/callback, login links, /health, /ready). Unset: one listener
    /// serves everything.
    #[arg(long, env = "OAUTH_RELAY_INTERNAL_ADDR")]
    pub internal_addr: Option<String>,
    /// The base URL programs reach the internal listener at (e.g. http://oauth-relay-internal:8001),
    /// for the `status_url` of new sessions. Unset with split listeners: `status_url` is the
    /// path alone, to resolve against the URL the session was created at.
    #[arg(long, env = "OAUTH_RELAY_INTERNAL_URL")]
    pub internal_url: Option<String>,
    /// Seconds anything pending (a callback, a registered state) is kept.
    #[arg(long, env = "OAUTH_RELAY_TTL_SECS", default_value_t = defaults::TTL_SECS)]
    pub ttl_secs: u64,
    /// Most callbacks and registered states held at once; past it /callback answers 503.
    #[arg(long, env = "OAUTH_RELAY_MAX_PENDING", default_value_t = defaults::MAX_PENDING)]
    pub max_pending: usize,
    /// Bearer token required on /api/... (off when unset). Prefer the environment variable:
    /// command lines are visible to other users of the machine.
    #[arg(long, env = "OAUTH_RELAY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Accept /callback only for states registered beforehand with POST /api/states. Clients
    /// may then register a state with the hash of their own retrieval secret without the API
    /// token; without an API token every registration must carry one.
    #[arg(long, env = "OAUTH_RELAY_REQUIRE_REGISTERED_STATE")]
    pub require_registered_state: bool,
    /// Most bytes of callback data (state, code, error texts) held at once; past it /callback
    /// answers 503, like past OAUTH_RELAY_MAX_PENDING. Bounds memory whatever the entries' size.
    #[arg(long, env = "OAUTH_RELAY_MAX_PENDING_BYTES", default_value_t = defaults::MAX_PENDING_BYTES)]
    pub max_pending_bytes: usize,
    /// Most broker login sessions held at once (in memory); past it session creation gets 503.
    #[arg(long, env = "OAUTH_RELAY_MAX_SESSIONS", default_value_t = defaults::MAX_SESSIONS)]
    pub max_sessions: usize,
    /// Longest request URL in bytes; longer ones get 414.
    #[arg(long, env = "OAUTH_RELAY_MAX_URL_BYTES", default_value_t = defaults::MAX_URL_BYTES)]
    pub max_url_bytes: usize,
    /// Most bytes of request line and headers; more gets 431 (414 when the request line alone
    /// is longer).
    #[arg(long, env = "OAUTH_RELAY_MAX_HEADER_BYTES", default_value_t = defaults::MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Most header fields in a request; more gets 431.
    #[arg(long, env = "OAUTH_RELAY_MAX_HEADERS", default_value_t = defaults::MAX_HEADERS)]
    pub max_headers: usize,
    /// Longest request body in bytes; longer gets 413.
    #[arg(long, env = "OAUTH_RELAY_MAX_BODY_BYTES", default_value_t = defaults::MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most open connections; at the cap the longest-idle one is closed to make room, and a
    /// newcomer gets 503 when none is idle.
    #[arg(long, env = "OAUTH_RELAY_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Longest long-poll in seconds (?wait= is capped to it).
    #[arg(long, env = "OAUTH_RELAY_MAX_WAIT_SECS", default_value_t = defaults::MAX_WAIT_SECS)]
    pub max_wait_secs: u64,
    /// Most long-polls waiting at once; past it they get 503.
    #[arg(long, env = "OAUTH_RELAY_MAX_WAITERS", default_value_t = defaults::MAX_WAITERS)]
    pub max_waiters: usize,
    /// Event-loop threads, each serving the connections handed to it (default: one per CPU).
    #[arg(long, env = "OAUTH_RELAY_WORKERS")]
    pub workers: Option<usize>,
    /// Most threads doing blocking work at once (Redis calls, calls to identity providers).
    #[arg(long, env = "OAUTH_RELAY_BLOCKING_THREADS", default_value_t = defaults::BLOCKING_THREADS)]
    pub blocking_threads: usize,
    /// Seconds a request (headers and body) may take to arrive, counted from when the
    /// connection is ready for it; also how long an idle keep-alive connection, or one that
    /// does not read its answer, is kept.
    #[arg(long, env = "OAUTH_RELAY_READ_TIMEOUT_SECS", default_value_t = defaults::READ_TIMEOUT_SECS)]
    pub read_timeout_secs: u64,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "OAUTH_RELAY_SHUTDOWN_GRACE_SECS", default_value_t = defaults::SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    /// debug, info (one line per request), warn, error or off.
    #[arg(long, env = "OAUTH_RELAY_LOG_LEVEL", default_value = defaults::LOG_LEVEL)]
    pub log_level: String,
    /// Redis for state shared by several replicas (`redis://` or `rediss://`); unset: in memory.
    #[arg(long, env = "OAUTH_RELAY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// File holding the Redis password (a mounted Kubernetes Secret), instead of the URL.
    #[arg(long, env = "OAUTH_RELAY_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://` with a private
    /// CA); unset: the public web roots.
    #[arg(long, env = "OAUTH_RELAY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// AEAD keys for secrets at rest in Redis: `KID:BASE64` (32 bytes) entries, comma-separated;
    /// the first encrypts, all decrypt. Required with Redis.
    #[arg(long, env = "OAUTH_RELAY_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "OAUTH_RELAY_REDIS_PREFIX", default_value = defaults::REDIS_PREFIX)]
    pub redis_prefix: String,
    /// Milliseconds a Redis call may take (connect, read, write) before the request gets 503.
    #[arg(long, env = "OAUTH_RELAY_REDIS_TIMEOUT_MS", default_value_t = defaults::REDIS_TIMEOUT_MS)]
    pub redis_timeout_ms: u64,
    #[command(flatten)]
    pub broker: crate::broker_config::BrokerArgs,
    #[command(flatten)]
    pub webhook: crate::events::config::WebhookArgs,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// The state the OAuth flow was started with.
    pub state: String,
    /// Base URL of the relay.
    #[arg(long, env = "OAUTH_RELAY_SERVER", default_value = defaults::SERVER_URL)]
    pub server: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = defaults::TTL_SECS)]
    pub timeout_secs: u64,
    /// Bearer token, when the relay requires one.
    #[arg(long, env = "OAUTH_RELAY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Read the retrieval secret (see `register`) from this environment variable. There is no
    /// option taking the secret itself: command lines are visible to other users.
    #[arg(long, value_name = "NAME", conflicts_with = "retrieval_secret_stdin")]
    pub retrieval_secret_env: Option<String>,
    /// Read the retrieval secret from the first line of standard input.
    #[arg(long)]
    pub retrieval_secret_stdin: bool,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The state the OAuth flow will be started with.
    pub state: String,
    /// Base URL of the relay (its internal listener, when it has one).
    #[arg(long, env = "OAUTH_RELAY_SERVER", default_value = defaults::SERVER_URL)]
    pub server: String,
    /// Seconds the registration lives (capped by the relay's OAUTH_RELAY_TTL_SECS).
    #[arg(long, default_value_t = defaults::TTL_SECS)]
    pub ttl_secs: u64,
    /// Bearer token, when the relay requires one for registration.
    #[arg(long, env = "OAUTH_RELAY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

#[derive(Args, Debug)]
pub struct LoginLinkArgs {
    /// The e-mail address of the person who must sign in.
    pub email: String,
    /// Base URL of the broker.
    #[arg(long, env = "WK_CALLBACK_SERVER", default_value = defaults::SERVER_URL)]
    pub server: String,
    /// The broker's bearer secret.
    #[arg(long, env = "OAUTH_RELAY_BROKER_TOKEN", hide_env_values = true)]
    pub broker_token: Option<String>,
    /// The same as --broker-token (its Workit name).
    #[arg(long, env = "WK_M365_BROKER_TOKEN", hide_env_values = true)]
    pub m365_broker_token: Option<String>,
    /// The identity provider (a name in the broker's OAUTH_RELAY_PROVIDERS); m365 uses
    /// /m365/sessions, as before.
    #[arg(long, default_value = crate::providers_config::M365)]
    pub provider: String,
    /// Ask the provider to show the consent screen again.
    #[arg(long)]
    pub force_consent: bool,
    /// Where the success page links back to (the chat the link came from); its origin must be
    /// in the broker's OAUTH_RELAY_RETURN_URL_ORIGINS.
    #[arg(long)]
    pub return_url: Option<String>,
    /// Wait for the sign-in and print the tokens.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = defaults::TTL_SECS)]
    pub timeout_secs: u64,
}

#[derive(Args, Debug)]
pub struct HealthcheckArgs {
    /// Port of the local server.
    #[arg(long, env = "OAUTH_CALLBACK_PORT", default_value_t = defaults::PORT)]
    pub port: u16,
    /// Full URL to check instead of http://127.0.0.1:PORT/health.
    #[arg(long)]
    pub url: Option<String>,
}

/// A command line (or environment) clap refused, explained for `main`.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseFailure {
    /// The client subcommand (`wait`, `login-link`, `healthcheck`); `None` when serving.
    pub subcommand: Option<String>,
    /// The problem in words that name the environment variable and the flag; `None` when the
    /// argument at fault has no variable (then clap's own message says it best).
    pub message: Option<String>,
}

/// Explains a clap error about `argv` (the whole command line, program name first). clap names
/// only the flag (`--port <PORT>`), even when the bad value came from the environment
/// (`OAUTH_CALLBACK_PORT=abc`); this finds the argument at fault in the command definition and
/// names its variable too. Secret values (`hide_env_values`) are not repeated.
pub fn explain_parse_error(err: &clap::Error, argv: &[std::ffi::OsString]) -> ParseFailure {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    use std::error::Error as _;

    let mut root = Cli::command();
    root.build();
    let sub = argv.get(1).and_then(|a| root.find_subcommand(a));
    let subcommand = sub
        .map(|s| s.get_name().to_string())
        .filter(|name| name != "serve");
    let given = argv.get(if sub.is_some() { 2 } else { 1 }..).unwrap_or(&[]);
    // The subcommand's own arguments first: the root's serve settings are read from the
    // environment even when a subcommand runs, so they can be at fault too.
    let find = |shown: &str| {
        sub.into_iter()
            .chain([&root])
            .flat_map(|c| c.get_arguments())
            .find(|a| a.to_string() == shown)
    };
    let variable_of = |arg: &clap::Arg| arg.get_env().map(|v| v.to_string_lossy().into_owned());
    let message = match (err.kind(), err.get(ContextKind::InvalidArg)) {
        (
            ErrorKind::ValueValidation | ErrorKind::InvalidValue,
            Some(ContextValue::String(shown)),
        ) => find(shown).and_then(|arg| {
            let variable = variable_of(arg)?;
            let flag = format!("--{}", arg.get_long()?);
            let on_command_line = given.iter().filter_map(|a| a.to_str()).any(|a| {
                a == flag
                    || a.strip_prefix(flag.as_str())
                        .is_some_and(|r| r.starts_with('='))
            });
            let place = if on_command_line {
                format!("{flag} (environment variable {variable})")
            } else {
                format!("{variable} (--{})", &flag[2..])
            };
            let value = match err.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(v)) if !arg.is_hide_env_values_set() => {
                    format!(" '{v}'")
                }
                _ => String::new(),
            };
            let reason = match err.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(valid)) => {
                    format!(": possible values: {}", valid.join(", "))
                }
                _ => err.source().map(|e| format!(": {e}")).unwrap_or_default(),
            };
            Some(format!("invalid value{value} for {place}{reason}"))
        }),
        (ErrorKind::MissingRequiredArgument, Some(ContextValue::Strings(missing))) => {
            let mut any_variable = false;
            let named: Vec<String> = missing
                .iter()
                .map(|shown| match find(shown).and_then(variable_of) {
                    Some(variable) => {
                        any_variable = true;
                        format!("{shown} (or the environment variable {variable})")
                    }
                    None => shown.clone(),
                })
                .collect();
            any_variable.then(|| format!("missing {}", named.join(", ")))
        }
        _ => None,
    };
    ParseFailure {
        subcommand,
        message,
    }
}

/// The validated configuration of `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// The internal listener's address, when the public and internal routes are split.
    pub internal_addr: Option<std::net::SocketAddr>,
    /// Where programs reach the internal listener, without a trailing slash.
    pub internal_url: Option<String>,
    pub ttl: Duration,
    pub max_pending: usize,
    pub max_pending_bytes: usize,
    pub max_sessions: usize,
    pub api_token: Option<Secret>,
    pub require_registered_state: bool,
    pub max_wait: Duration,
    pub max_waiters: usize,
    pub log_level: Level,
    pub server: server::Options,
    /// Broker mode, when its settings are present.
    pub broker: Option<crate::broker_config::BrokerConfig>,
    /// Shared state in Redis; `None`: in memory.
    pub redis: Option<RedisConfig>,
    /// Signed completion events, when an endpoint is configured.
    pub webhook: Option<crate::events::config::WebhookConfig>,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: Secret,
    pub password: Option<Secret>,
    pub ca_pem: Option<Vec<u8>>,
    /// Parsed once, here: validating the setting and using it are the same work.
    pub keys: std::sync::Arc<crate::keyring::Keyring>,
    pub prefix: String,
    pub timeout: Duration,
}

impl RedisConfig {
    fn from_args(a: &ServeArgs) -> Result<Option<RedisConfig>, String> {
        let Some(url) = a
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err("OAUTH_RELAY_REDIS_URL must start with redis:// or rediss://".into());
        }
        let key = a
            .encryption_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or("OAUTH_RELAY_REDIS_URL needs OAUTH_RELAY_ENCRYPTION_KEY: secrets are never stored in Redis in the clear")?;
        let keys = std::sync::Arc::new(crate::keyring::Keyring::parse(&key)?);
        let password = match &a.redis_password_file {
            None => None,
            Some(path) => Some(Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        format!("OAUTH_RELAY_REDIS_PASSWORD_FILE {}: {e}", path.display())
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            )),
        };
        let ca_pem = match &a.redis_ca_file {
            None => None,
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("OAUTH_RELAY_REDIS_CA_FILE {}: {e}", path.display()))?,
            ),
        };
        if a.redis_timeout_ms == 0 {
            return Err("OAUTH_RELAY_REDIS_TIMEOUT_MS must be at least 1".into());
        }
        Ok(Some(RedisConfig {
            url: Secret::new(url),
            password,
            ca_pem,
            keys,
            prefix: a.redis_prefix.clone(),
            timeout: Duration::from_millis(a.redis_timeout_ms),
        }))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: defaults::HOST.into(),
            port: defaults::PORT,
            internal_addr: None,
            internal_url: None,
            ttl: Duration::from_secs(defaults::TTL_SECS),
            max_pending: defaults::MAX_PENDING,
            max_pending_bytes: defaults::MAX_PENDING_BYTES,
            max_sessions: defaults::MAX_SESSIONS,
            api_token: None,
            require_registered_state: false,
            max_wait: Duration::from_secs(defaults::MAX_WAIT_SECS),
            max_waiters: defaults::MAX_WAITERS,
            log_level: Level::Info,
            server: server::Options {
                read_timeout: Duration::from_secs(defaults::READ_TIMEOUT_SECS),
                max_url_bytes: defaults::MAX_URL_BYTES,
                max_header_bytes: defaults::MAX_HEADER_BYTES,
                max_headers: defaults::MAX_HEADERS,
                max_body_bytes: defaults::MAX_BODY_BYTES,
                max_connections: defaults::MAX_CONNECTIONS,
                blocking_threads: defaults::BLOCKING_THREADS,
                shutdown_grace: Duration::from_secs(defaults::SHUTDOWN_GRACE_SECS),
                ..server::Options::default()
            },
            broker: None,
            redis: None,
            webhook: None,
        }
    }
}

impl Config {
    /// Checks every setting; the error names the variable to fix. `env` holds the environment
    /// variables clap does not declare (the providers' own).
    pub fn from_args(a: ServeArgs, env: &crate::providers_config::Env) -> Result<Config, String> {
        let redis = RedisConfig::from_args(&a)?;
        let webhook = crate::events::config::WebhookConfig::from_args(a.webhook.clone())?;
        fn positive(name: &str, v: u64) -> Result<u64, String> {
            if v == 0 {
                Err(format!("{name} must be at least 1"))
            } else {
                Ok(v)
            }
        }
        let api_token = match a.api_token {
            None => None,
            Some(t) if t.trim().len() < 16 || t.trim() != t => return Err(
                "OAUTH_RELAY_API_TOKEN must be at least 16 characters, without surrounding spaces"
                    .into(),
            ),
            Some(t) => Some(Secret::new(t)),
        };
        if a.max_url_bytes < 256 {
            return Err("OAUTH_RELAY_MAX_URL_BYTES must be at least 256".into());
        }
        if a.max_header_bytes < a.max_url_bytes + 256 {
            return Err("OAUTH_RELAY_MAX_HEADER_BYTES must be at least OAUTH_RELAY_MAX_URL_BYTES + 256 (the request line is part of the head)".into());
        }
        let internal_addr = match a.internal_addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(addr) => Some(addr.parse::<std::net::SocketAddr>().map_err(|_| {
                format!("OAUTH_RELAY_INTERNAL_ADDR must be an IP address and port such as 0.0.0.0:8001, not {addr:?}")
            })?),
        };
        let internal_url = match a.internal_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => Some(crate::cli::server_url(
                url,
                "--internal-url",
                "OAUTH_RELAY_INTERNAL_URL",
            )?),
        };
        let log_level = Level::parse(&a.log_level)
            .ok_or("OAUTH_RELAY_LOG_LEVEL must be one of debug, info, warn, error, off")?;
        Ok(Config {
            redis,
            host: a.host,
            port: a.port,
            internal_addr,
            internal_url,
            ttl: Duration::from_secs(positive("OAUTH_RELAY_TTL_SECS", a.ttl_secs)?),
            max_pending: positive("OAUTH_RELAY_MAX_PENDING", a.max_pending as u64)? as usize,
            max_pending_bytes: positive(
                "OAUTH_RELAY_MAX_PENDING_BYTES",
                a.max_pending_bytes as u64,
            )? as usize,
            max_sessions: positive("OAUTH_RELAY_MAX_SESSIONS", a.max_sessions as u64)? as usize,
            api_token,
            require_registered_state: a.require_registered_state,
            max_wait: Duration::from_secs(a.max_wait_secs),
            max_waiters: a.max_waiters,
            log_level,
            server: server::Options {
                workers: match a.workers {
                    None => Config::default().server.workers,
                    Some(n) => positive("OAUTH_RELAY_WORKERS", n as u64)? as usize,
                },
                blocking_threads: positive(
                    "OAUTH_RELAY_BLOCKING_THREADS",
                    a.blocking_threads as u64,
                )? as usize,
                max_header_bytes: a.max_header_bytes,
                max_headers: positive("OAUTH_RELAY_MAX_HEADERS", a.max_headers as u64)? as usize,
                max_body_bytes: positive("OAUTH_RELAY_MAX_BODY_BYTES", a.max_body_bytes as u64)?
                    as usize,
                max_connections: positive("OAUTH_RELAY_MAX_CONNECTIONS", a.max_connections as u64)?
                    as usize,
                read_timeout: Duration::from_secs(positive(
                    "OAUTH_RELAY_READ_TIMEOUT_SECS",
                    a.read_timeout_secs,
                )?),
                max_url_bytes: a.max_url_bytes,
                shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
                ..Config::default().server
            },
            broker: crate::broker_config::BrokerConfig::from_args(a.broker, env)?,
            webhook,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["oauth-relay"];
        argv.extend_from_slice(args);
        Config::from_args(
            Cli::try_parse_from(argv).map_err(|e| e.to_string())?.serve,
            &Default::default(),
        )
    }

    #[test]
    fn defaults_match_config_default() {
        let c = parse(&[]).unwrap();
        let d = Config::default();
        assert_eq!(
            (c.host, c.port, c.ttl, c.max_pending),
            (d.host, d.port, d.ttl, d.max_pending)
        );
        assert_eq!(c.server.read_timeout, d.server.read_timeout);
    }

    fn explain(args: &[&str]) -> ParseFailure {
        let mut argv = vec!["oauth-relay"];
        argv.extend_from_slice(args);
        let err = Cli::try_parse_from(&argv).unwrap_err();
        let argv: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
        explain_parse_error(&err, &argv)
    }

    #[test]
    fn refused_values_name_the_flag_and_its_variable() {
        let f = explain(&["--port", "abc"]);
        assert_eq!(f.subcommand, None);
        let message = f.message.unwrap();
        assert!(
            message.contains("'abc'")
                && message.contains("--port")
                && message.contains("OAUTH_CALLBACK_PORT"),
            "{message}"
        );
        let f = explain(&["serve", "--max-waiters=-1"]);
        assert_eq!(f.subcommand, None);
        let message = f.message.unwrap();
        assert!(message.contains("OAUTH_RELAY_MAX_WAITERS"), "{message}");
        let f = explain(&["healthcheck", "--port=70000"]);
        assert_eq!(f.subcommand.as_deref(), Some("healthcheck"));
        assert!(f.message.unwrap().contains("OAUTH_CALLBACK_PORT"));
        // No variable behind --timeout-secs: clap's own words are kept.
        let f = explain(&["wait", "s", "--timeout-secs", "abc"]);
        assert_eq!((f.subcommand.as_deref(), f.message), (Some("wait"), None));
        let f = explain(&["--no-such-flag"]);
        assert_eq!((f.subcommand, f.message), (None, None));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        assert!(parse(&["--ttl-secs", "0"])
            .unwrap_err()
            .contains("OAUTH_RELAY_TTL_SECS"));
        assert!(parse(&["--api-token", "short"])
            .unwrap_err()
            .contains("OAUTH_RELAY_API_TOKEN"));
        // Without the API token, registered-states mode takes registrations with a retrieval
        // hash only (relay::register).
        assert!(parse(&["--require-registered-state"]).is_ok());
        assert!(parse(&["--internal-addr", "localhost"])
            .unwrap_err()
            .contains("OAUTH_RELAY_INTERNAL_ADDR"));
        assert_eq!(
            parse(&["--internal-addr", "127.0.0.1:8001"])
                .unwrap()
                .internal_addr,
            Some("127.0.0.1:8001".parse().unwrap())
        );
        assert!(parse(&["--log-level", "loud"])
            .unwrap_err()
            .contains("OAUTH_RELAY_LOG_LEVEL"));
    }
}
