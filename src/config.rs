//! Command line and environment, parsed by clap and validated into `Config`. Every default of
//! the service's own settings is in `defaults`, once: the flags default to it (`--help` shows
//! it), and `Config::default()` and `ServerOptions::default()` are built from it. Handlers never
//! read the environment. The
//! variables whose names depend on other settings (`OAUTH_RELAY_PROVIDER_<NAME>_*`) come in a
//! map (`providers_config::Env`) that `main` fills once from the process environment.

use crate::client_ip::TrustedProxies;
use crate::logging::Level;
use crate::secret::Secret;
use clap::{Args, Parser, Subcommand};
use std::time::Duration;

/// Every default of `serve`'s own settings and of the client subcommands (completion events',
/// the broker's and each provider's are their own modules').
pub use crate::defaults;

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
    /// Make a key pair for sealed hand-offs: write the private JWK to --out (readable by its
    /// owner alone; an existing file is never overwritten) and print the public JWK, to give as
    /// a session's `seal_to` (or use with `login-link --seal-to`).
    Keygen(KeygenArgs),
    /// Open a sealed answer read from stdin (`{"sealed":"..."}` as /token answers it, or the JWE
    /// alone) with the private JWK of --key, and print what it holds as one JSON line.
    ///
    /// Exit status: 0 when opened; 1 for an answer sealed to another key, altered, expired, for
    /// another session (with --audience), or anything else.
    Open(OpenArgs),
    /// Print a fresh access token of a kept connection (for scripts), refreshed by the broker
    /// if needed; the refresh token never leaves the broker.
    ///
    /// The connection's credential comes from the variable --credential-env names or the first
    /// line of stdin (--credential-stdin), never from the command line; or the broker token
    /// from the variable --broker-token-env names, where the broker allows it. Prints the
    /// access token alone (--json: the whole answer). Exit status: 0 with a token; 2 when the
    /// connection needs a new sign-in (reason on stderr); 1 otherwise.
    Token(TokenArgs),
    /// Exit 0 when the local server answers /health, 1 otherwise (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// Run a deployment's validation checklist against its public and internal URLs and print
    /// it, with a fix for each failed item.
    ///
    /// Checks the probes, the listener split, session creation without and with the broker
    /// token, and for every provider the login link's redirect (redirect URI, PKCE, state,
    /// scopes) and what the service reaches at the provider; completion events with
    /// --expect-events. Exit status: 0 when every item passed, 1 otherwise.
    CheckDeployment(CheckArgs),
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
    /// Seconds anything pending (a callback, a registered state) is kept; also how long an
    /// expired registration stays a tombstone (nobody may register its state again).
    #[arg(long, env = "OAUTH_RELAY_TTL_SECS", default_value_t = defaults::TTL_SECS)]
    pub ttl_secs: u64,
    /// Most callbacks and registered states held at once; past it /callback answers 503.
    #[arg(long, env = "OAUTH_RELAY_MAX_PENDING", default_value_t = defaults::MAX_PENDING)]
    pub max_pending: usize,
    /// Most callbacks and self-registrations (without the API token) one client holds at once;
    /// past it it gets 429. A client is an IPv4 address or an IPv6 /64. Defaults to 1 % of
    /// OAUTH_RELAY_MAX_PENDING, at least 10.
    #[arg(long, env = "OAUTH_RELAY_MAX_PENDING_PER_CLIENT")]
    pub max_pending_per_client: Option<usize>,
    /// Bearer token required on /api/... (off when unset). Prefer the environment variable:
    /// command lines are visible to other users of the machine.
    #[arg(long, env = "OAUTH_RELAY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Accept /callback only for states registered beforehand with POST /api/states. With an API
    /// token, registering needs it; without one, every registration must carry the hash of the
    /// client's own retrieval secret.
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
    /// Most open connections one client (an IP address; an IPv6 /64) may hold on both listeners
    /// together; at it, its own longest-idle connection is closed for a newcomer, and with none
    /// idle the newcomer gets 429. Connections from OAUTH_RELAY_TRUSTED_PROXIES count under no
    /// client (they carry many); the listener's share bounds them.
    #[arg(long, env = "OAUTH_RELAY_MAX_CONNECTIONS_PER_CLIENT", default_value_t = defaults::MAX_CONNECTIONS_PER_CLIENT)]
    pub max_connections_per_client: usize,
    /// With OAUTH_RELAY_INTERNAL_ADDR: connections of OAUTH_RELAY_MAX_CONNECTIONS that the
    /// internal listener can never take, kept for the public one (browsers).
    #[arg(long, env = "OAUTH_RELAY_PUBLIC_RESERVED_CONNECTIONS", default_value_t = defaults::PUBLIC_RESERVED_CONNECTIONS)]
    pub public_reserved_connections: usize,
    /// With OAUTH_RELAY_INTERNAL_ADDR: connections of OAUTH_RELAY_MAX_CONNECTIONS that the
    /// public listener can never take, kept for the internal one (the probes, /metrics, callers).
    #[arg(long, env = "OAUTH_RELAY_INTERNAL_RESERVED_CONNECTIONS", default_value_t = defaults::INTERNAL_RESERVED_CONNECTIONS)]
    pub internal_reserved_connections: usize,
    /// Proxies whose forwarding header names the client (per-client shares then count that
    /// client): IP addresses and CIDRs, comma-separated (e.g. 10.0.0.0/8,fd00::/8). Empty: trust
    /// nobody, every request is its TCP peer's.
    #[arg(long, env = "OAUTH_RELAY_TRUSTED_PROXIES", default_value = defaults::TRUSTED_PROXIES)]
    pub trusted_proxies: String,
    /// The header trusted proxies name the client in: x-forwarded-for, or forwarded (RFC 7239).
    /// It must be one the proxy writes itself (appending its peer), never one it passes through
    /// from clients untouched.
    #[arg(long, env = "OAUTH_RELAY_CLIENT_IP_HEADER", default_value = defaults::CLIENT_IP_HEADER)]
    pub client_ip_header: String,
    /// Longest long-poll in seconds (?wait= is capped to it).
    #[arg(long, env = "OAUTH_RELAY_MAX_WAIT_SECS", default_value_t = defaults::MAX_WAIT_SECS)]
    pub max_wait_secs: u64,
    /// Most long-polls waiting at once; past it they get 503.
    #[arg(long, env = "OAUTH_RELAY_MAX_WAITERS", default_value_t = defaults::MAX_WAITERS)]
    pub max_waiters: usize,
    /// Most long-polls one client (an IP address, behind OAUTH_RELAY_TRUSTED_PROXIES the one
    /// they forward; an IPv6 /64) may have waiting at once; past it 429.
    #[arg(long, env = "OAUTH_RELAY_MAX_WAITERS_PER_CLIENT", default_value_t = defaults::MAX_WAITERS_PER_CLIENT)]
    pub max_waiters_per_client: usize,
    /// Event-loop threads, each serving the connections handed to it (default: one per CPU).
    #[arg(long, env = "OAUTH_RELAY_WORKERS")]
    pub workers: Option<usize>,
    /// Most threads doing blocking work at once (the broker's Redis calls, calls to identity
    /// providers; the relay's routes await Redis on the event loop).
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
    /// Origins of web pages that may call the retrieval endpoints (/api/callback/{state},
    /// /api/states) from a browser: `*` (any), or a comma-separated list such as
    /// https://app.example.com,http://localhost:3000 (each answer then names the page's origin
    /// when listed); blank: none.
    #[arg(long, env = "OAUTH_RELAY_CORS_ORIGINS", default_value = defaults::CORS_ORIGINS)]
    pub cors_origins: String,
    #[command(flatten)]
    pub redis: crate::kv::settings::RedisArgs,
    #[command(flatten)]
    pub broker: crate::broker_config::BrokerArgs,
    #[command(flatten)]
    pub webhook: crate::events::config::WebhookArgs,
    #[command(flatten)]
    pub connections: crate::connections::config::ConnectionsArgs,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// The state the OAuth flow was started with (it may begin with `-`).
    #[arg(allow_hyphen_values = true)]
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
    /// The state the OAuth flow will be started with (it may begin with `-`).
    #[arg(allow_hyphen_values = true)]
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
    /// A JWK file: the broker seals the tokens to its public key (only the public part is ever
    /// sent). With --wait, a private key (as `keygen` writes it) opens the answer and the tokens
    /// are printed as without sealing; a public key prints the sealed answer as it came.
    #[arg(long, value_name = "FILE")]
    pub seal_to: Option<std::path::PathBuf>,
    /// Ask the broker to keep the grant as a connection: with --wait, the answer names the
    /// connection and its credential (printed once) instead of the refresh token.
    #[arg(long)]
    pub keep: bool,
    /// Wait for the sign-in and print the tokens.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = defaults::TTL_SECS)]
    pub timeout_secs: u64,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The connection's id (`connection.id` in the answer of the sign-in that made it).
    pub connection: String,
    /// Base URL of the broker (its internal listener, when it has one).
    #[arg(long, env = "WK_CALLBACK_SERVER", default_value = defaults::SERVER_URL)]
    pub server: String,
    /// Read the connection's credential from this environment variable. There is no option
    /// taking the credential itself: command lines are visible to other users.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["credential_stdin", "broker_token_env"])]
    pub credential_env: Option<String>,
    /// Read the connection's credential from the first line of standard input.
    #[arg(long, conflicts_with = "broker_token_env")]
    pub credential_stdin: bool,
    /// Present the broker token, read from this environment variable, instead of the
    /// connection's credential (the broker must allow it: OAUTH_RELAY_CONNECTIONS_BROKER_TOKEN).
    #[arg(long, value_name = "NAME")]
    pub broker_token_env: Option<String>,
    /// Seconds of life the token must have left (the broker refreshes it otherwise).
    #[arg(long, default_value_t = 0)]
    pub min_ttl: u64,
    /// A JWK file: the broker seals the answer to its public key (only the public part is
    /// sent). A private key (as `keygen` writes it) opens the answer and the token is printed
    /// as without sealing; a public key prints the sealed answer as it came.
    #[arg(long, value_name = "FILE")]
    pub seal_to: Option<std::path::PathBuf>,
    /// Print the whole answer as one JSON line (the token, its expiry and scope) instead of the
    /// access token alone.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds while the broker says a refresh is still running.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the private key (a JWK, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,
    /// p-256 (an EC key: every JOSE library opens it) or x25519 (an OKP key).
    #[arg(long, default_value = "p-256", value_parser = ["p-256", "x25519"])]
    pub curve: String,
}

#[derive(Args, Debug)]
pub struct OpenArgs {
    /// The private JWK the answer was sealed to (as `keygen` writes it).
    #[arg(long, value_name = "FILE")]
    pub key: std::path::PathBuf,
    /// The `state` of the session the answer must be for (its `aud`); not checked when absent.
    /// It may begin with `-` (a random state can).
    #[arg(long, value_name = "STATE", allow_hyphen_values = true)]
    pub audience: Option<String>,
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

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The public URL people's browsers reach the relay at, as registered with the providers
    /// (e.g. https://relay.example.com). Defaults to WK_PUBLIC_BASE_URL when this is unset.
    #[arg(long, env = "OAUTH_RELAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The URL programs reach the internal listener at (e.g.
    /// http://oauth-relay-internal.NAMESPACE:8001).
    #[arg(long, env = "OAUTH_RELAY_INTERNAL_URL")]
    pub internal_url: Option<String>,
    /// Read the broker token from this environment variable. Without any --broker-token-*
    /// option it comes from OAUTH_RELAY_BROKER_TOKEN, else WK_M365_BROKER_TOKEN. There is
    /// deliberately no option taking the token itself: command lines are visible to others.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["broker_token_file", "broker_token_stdin"])]
    pub broker_token_env: Option<String>,
    /// Read the broker token from this file (a mounted Secret).
    #[arg(long, value_name = "PATH", conflicts_with = "broker_token_stdin")]
    pub broker_token_file: Option<std::path::PathBuf>,
    /// Read the broker token from the first line of standard input.
    #[arg(long)]
    pub broker_token_stdin: bool,
    /// Check these providers only, each of which must be configured (repeatable, or
    /// comma-separated). Default: every provider the service reports.
    #[arg(long = "provider", value_name = "NAME", value_delimiter = ',')]
    pub providers: Vec<String>,
    /// Completion events must be configured (OAUTH_RELAY_WEBHOOK_URL on the service).
    #[arg(long)]
    pub expect_events: bool,
    /// Marks in plain ASCII (PASS, FAIL, SKIP) instead of ✓ ✗ -, for CI logs.
    #[arg(long)]
    pub ascii: bool,
    /// Seconds each request may take (the service's answer to GET /deployment includes its own
    /// calls to the providers, at most 5 s).
    #[arg(long, default_value_t = defaults::CHECK_TIMEOUT_SECS)]
    pub timeout_secs: u64,
}

/// The base URL of the relay or broker, from `--server` or its environment variable: http or
/// https with a host, no query string or fragment (a path prefix is kept). Returned without a
/// trailing slash. A value that can never work fails at once instead of being retried.
pub fn server_url(value: &str, flag: &str, variable: &str) -> Result<String, String> {
    let trimmed = value.trim().trim_end_matches('/');
    let usable = trimmed.parse::<http::Uri>().ok().is_some_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
            && uri.query().is_none()
    }) && !trimmed.contains('#');
    if usable {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "{flag} (or {variable}) must be an http:// or https:// URL such as {}, not {value:?}",
            defaults::SERVER_URL
        ))
    }
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
    /// Each client's share of `max_pending`.
    pub max_pending_per_client: usize,
    pub max_pending_bytes: usize,
    pub max_sessions: usize,
    pub api_token: Option<Secret>,
    pub require_registered_state: bool,
    pub max_wait: Duration,
    pub max_waiters: usize,
    pub max_waiters_per_client: usize,
    pub log_level: Level,
    /// Which web pages' origins may read the retrieval endpoints' answers.
    pub cors: crate::cors::Cors,
    pub server: ServerOptions,
    /// Broker mode, when its settings are present.
    pub broker: Option<crate::broker_config::BrokerConfig>,
    /// Shared state in Redis; `None`: in memory.
    pub redis: Option<RedisConfig>,
    /// Signed completion events, when an endpoint is configured.
    pub webhook: Option<crate::events::config::WebhookConfig>,
    /// Kept connections' settings, in broker mode (whether they can be kept at all is
    /// `ConnectionsConfig::kept_in`).
    pub connections: Option<crate::connections::config::ConnectionsConfig>,
    /// OAUTH_RELAY_ENCRYPTION_KEY is set (and valid) but nothing uses it: it seals what is
    /// stored in Redis, and kept connections in their file (broker mode). Start-up warns rather
    /// than refuses: the key is harmless, an operator may set it ahead of moving to Redis; but
    /// nobody should believe it protects what is held in memory.
    pub unused_encryption_key: bool,
}

/// What the server (`server/`) is given: its bounds, caps and shares, timers and threads.
/// Every default is `defaults`' (the binary's flags default to the same constants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Event-loop threads. Defaults to `defaults::workers()`: one per CPU.
    pub workers: usize,
    /// Most threads running blocking work at once (Redis calls, code exchanges); more wait their
    /// turn. Defaults to `defaults::BLOCKING_THREADS`.
    pub blocking_threads: usize,
    /// A request's head and body must arrive within this long of the connection being ready for
    /// it; an idle keep-alive connection is closed after it, and so is one whose writes stall
    /// this long. Defaults to `defaults::READ_TIMEOUT_SECS`.
    pub read_timeout: Duration,
    /// Longer request targets get 414. Defaults to `defaults::MAX_URL_BYTES`.
    pub max_url_bytes: usize,
    /// Request line and headers together; more gets 431 (414 when the request line alone does
    /// not fit). Defaults to `defaults::MAX_HEADER_BYTES`.
    pub max_header_bytes: usize,
    /// More header fields get 431. Defaults to `defaults::MAX_HEADERS`.
    pub max_headers: usize,
    /// Longer bodies get 413. Defaults to `defaults::MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// Open connections at most; past it the longest-idle one is closed, or the newcomer gets
    /// 503 when none is idle. Defaults to `defaults::MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// Open connections one client (`client_ip::share_key` of the peer) may hold on all
    /// listeners together; at it, its own longest-idle connection is closed for its newcomer,
    /// or the newcomer gets 429 when none is idle. Connections from trusted proxies count under
    /// no client. Defaults to `defaults::MAX_CONNECTIONS_PER_CLIENT`.
    pub max_connections_per_client: usize,
    /// With a public and an internal listener, connections of `max_connections` that only the
    /// public one may hold. Defaults to `defaults::PUBLIC_RESERVED_CONNECTIONS`.
    pub public_reserved: usize,
    /// With a public and an internal listener, connections of `max_connections` that only the
    /// internal one (the probes, `/metrics`, the callers) may hold. Defaults to
    /// `defaults::INTERNAL_RESERVED_CONNECTIONS`.
    pub internal_reserved: usize,
    /// The proxies whose forwarding header names a request's client. Defaults to nobody
    /// (`defaults::TRUSTED_PROXIES`).
    pub trusted_proxies: TrustedProxies,
    /// How long in-flight requests may take to finish after a shutdown request. Defaults to
    /// `defaults::SHUTDOWN_GRACE_SECS`.
    pub shutdown_grace: Duration,
    /// How long to keep retrying a failing accept before exiting non-zero. Defaults to
    /// `defaults::ACCEPT_GIVE_UP_SECS`.
    pub give_up_after: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            workers: defaults::workers(),
            blocking_threads: defaults::BLOCKING_THREADS,
            read_timeout: Duration::from_secs(defaults::READ_TIMEOUT_SECS),
            max_url_bytes: defaults::MAX_URL_BYTES,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_headers: defaults::MAX_HEADERS,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_client: defaults::MAX_CONNECTIONS_PER_CLIENT,
            public_reserved: defaults::PUBLIC_RESERVED_CONNECTIONS,
            internal_reserved: defaults::INTERNAL_RESERVED_CONNECTIONS,
            trusted_proxies: TrustedProxies::parse(
                defaults::TRUSTED_PROXIES,
                crate::client_ip::ForwardedHeader::parse(defaults::CLIENT_IP_HEADER)
                    .expect("the default header is one"),
            )
            .expect("the default list parses"),
            shutdown_grace: Duration::from_secs(defaults::SHUTDOWN_GRACE_SECS),
            give_up_after: Duration::from_secs(defaults::ACCEPT_GIVE_UP_SECS),
        }
    }
}

/// Shared state in Redis: where it is (`kv`), the keys that seal what is stored there, and
/// how many replicas must have a take before it is used.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub kv: crate::kv::KvSettings,
    /// Parsed once, here: validating the setting and using it are the same work.
    pub keys: std::sync::Arc<crate::keyring::Keyring>,
    pub durability: Durability,
}

/// What a take (something handed out once) waits for before it is used: `replicas` replicas
/// acknowledging it (WAIT), for at most `wait`. With fewer, the take fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    pub replicas: u32,
    pub wait: Duration,
}

impl RedisConfig {
    /// `kv` with the default durability of its topology (tests, benchmarks).
    pub fn new(
        kv: crate::kv::KvSettings,
        keys: std::sync::Arc<crate::keyring::Keyring>,
    ) -> RedisConfig {
        let replicated = !matches!(
            kv.topology,
            crate::kv::settings::Topology::Standalone { .. }
        );
        RedisConfig {
            kv,
            keys,
            durability: Durability {
                replicas: defaults::redis_min_replicas_acked(replicated),
                wait: Duration::from_millis(defaults::REDIS_REPLICA_WAIT_MS),
            },
        }
    }

    fn from_args(a: &ServeArgs) -> Result<Option<RedisConfig>, String> {
        let Some(kv) = crate::kv::KvSettings::from_args(&a.redis).map_err(|e| e.to_string())?
        else {
            if a.redis.redis_min_replicas_acked.is_some() {
                return Err("OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED is set, so OAUTH_RELAY_REDIS_URL, OAUTH_RELAY_REDIS_SENTINELS or OAUTH_RELAY_REDIS_CLUSTER_NODES must be set too".into());
            }
            return Ok(None);
        };
        use crate::kv::settings::{Topology, CLUSTER_NODES, SENTINELS, URL};
        let chosen = match kv.topology {
            Topology::Standalone { .. } => URL,
            Topology::Sentinel(_) => SENTINELS,
            Topology::Cluster { .. } => CLUSTER_NODES,
        };
        let key = a
            .redis
            .encryption_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| format!("{} needs OAUTH_RELAY_ENCRYPTION_KEY: secrets are never stored in Redis in the clear", chosen.variable))?;
        let keys = std::sync::Arc::new(crate::keyring::Keyring::parse(&key)?);
        let mut config = RedisConfig::new(kv, keys);
        if let Some(n) = a.redis.redis_min_replicas_acked {
            config.durability.replicas = n;
        }
        if a.redis.redis_replica_wait_ms == 0 {
            return Err("OAUTH_RELAY_REDIS_REPLICA_WAIT_MS must be at least 1".into());
        }
        config.durability.wait = Duration::from_millis(a.redis.redis_replica_wait_ms);
        Ok(Some(config))
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
            max_pending_per_client: defaults::max_pending_per_client(defaults::MAX_PENDING),
            max_pending_bytes: defaults::MAX_PENDING_BYTES,
            max_sessions: defaults::MAX_SESSIONS,
            api_token: None,
            require_registered_state: false,
            max_wait: Duration::from_secs(defaults::MAX_WAIT_SECS),
            max_waiters: defaults::MAX_WAITERS,
            max_waiters_per_client: defaults::MAX_WAITERS_PER_CLIENT,
            log_level: Level::parse(defaults::LOG_LEVEL).expect("the default level is one"),
            cors: crate::cors::Cors::parse(defaults::CORS_ORIGINS)
                .expect("the default origins parse"),
            server: ServerOptions::default(),
            broker: None,
            redis: None,
            webhook: None,
            connections: None,
            unused_encryption_key: false,
        }
    }
}

/// `message` with each setting's variable followed by its flag, `OAUTH_RELAY_TTL_SECS
/// (--ttl-secs)`, where the message does not name the flag already: a refused value says both
/// ways to set it, whichever was used. Variables without a flag (a provider's own) stay as they are.
pub fn name_flags(message: &str) -> String {
    use clap::CommandFactory;
    let mut root = Cli::command();
    root.build();
    let mut out = String::with_capacity(message.len() + 32);
    let mut named: Vec<String> = Vec::new();
    let mut rest = message;
    while let Some(start) = rest.find(|c: char| c.is_ascii_uppercase()) {
        out.push_str(&rest[..start]);
        let word = &rest[start..];
        let end = word
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(word.len());
        let (variable, after) = word.split_at(end);
        out.push_str(variable);
        let flag = root
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == variable))
            .and_then(|a| a.get_long())
            .map(|long| format!("--{long}"));
        if let Some(flag) = flag {
            let already = message.contains(&format!("{flag} ")) || message.ends_with(&flag);
            if !already && !named.contains(&flag) && !after.starts_with(" (--") {
                out.push_str(&format!(" ({flag})"));
                named.push(flag);
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A setting `serve` cannot start with. Its `Display` is the line `main` logs, each variable
/// followed by its flag (`name_flags`): `OAUTH_RELAY_TTL_SECS (--ttl-secs) must be at least 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A count or a number of seconds that must be at least 1: its variable.
    Zero(&'static str),
    /// `OAUTH_RELAY_API_TOKEN` is too short, or has spaces around it.
    ApiToken,
    /// `OAUTH_RELAY_MAX_URL_BYTES` is below 256.
    UrlBytes,
    /// `OAUTH_RELAY_MAX_HEADER_BYTES` leaves no room for the longest request line.
    HeaderBytes,
    /// `OAUTH_RELAY_INTERNAL_ADDR` is not an IP address and port: the value.
    InternalAddr(String),
    /// `--internal-url`, in `server_url`'s words.
    InternalUrl(String),
    /// The listeners' reserved connections add up to more than the cap.
    Reserves { reserved: usize, max: usize },
    /// `OAUTH_RELAY_CLIENT_IP_HEADER` is neither header.
    ClientIpHeader,
    /// An entry of `OAUTH_RELAY_TRUSTED_PROXIES` is no address or CIDR: the entry.
    TrustedProxy(String),
    /// `OAUTH_RELAY_LOG_LEVEL` is no level.
    LogLevel,
    /// Redis's settings (`RedisConfig`, `src/kv`), in their own words.
    Redis(String),
    /// `OAUTH_RELAY_ENCRYPTION_KEY`, in the keyring's words.
    EncryptionKey(String),
    /// Completion events' settings, in their own words.
    Webhook(String),
    /// `OAUTH_RELAY_CORS_ORIGINS`, in its own words.
    Cors(String),
    /// The broker's and its providers' settings, in their own words.
    Broker(String),
    /// Kept connections' settings, in their own words.
    Connections(String),
}

impl ConfigError {
    /// The words before the flags are named.
    fn words(&self) -> String {
        match self {
            ConfigError::Zero(variable) => format!("{variable} must be at least 1"),
            ConfigError::ApiToken => {
                "OAUTH_RELAY_API_TOKEN must be at least 16 characters, without surrounding spaces"
                    .into()
            }
            ConfigError::UrlBytes => "OAUTH_RELAY_MAX_URL_BYTES must be at least 256".into(),
            ConfigError::HeaderBytes => "OAUTH_RELAY_MAX_HEADER_BYTES must be at least OAUTH_RELAY_MAX_URL_BYTES + 256 (the request line is part of the head)".into(),
            ConfigError::InternalAddr(addr) => format!("OAUTH_RELAY_INTERNAL_ADDR must be an IP address and port such as 0.0.0.0:8001, not {addr:?}"),
            ConfigError::Reserves { reserved, max } => format!(
                "OAUTH_RELAY_PUBLIC_RESERVED_CONNECTIONS + OAUTH_RELAY_INTERNAL_RESERVED_CONNECTIONS ({reserved}) must be at most OAUTH_RELAY_MAX_CONNECTIONS ({max})"
            ),
            ConfigError::ClientIpHeader => {
                "OAUTH_RELAY_CLIENT_IP_HEADER must be x-forwarded-for or forwarded".into()
            }
            ConfigError::TrustedProxy(entry) => format!("OAUTH_RELAY_TRUSTED_PROXIES must list IP addresses and CIDRs such as 10.0.0.0/8, separated by commas; {entry:?} is neither"),
            ConfigError::LogLevel => {
                "OAUTH_RELAY_LOG_LEVEL must be one of debug, info, warn, error, off".into()
            }
            ConfigError::InternalUrl(words)
            | ConfigError::Redis(words)
            | ConfigError::EncryptionKey(words)
            | ConfigError::Webhook(words)
            | ConfigError::Cors(words)
            | ConfigError::Broker(words)
            | ConfigError::Connections(words) => words.clone(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&name_flags(&self.words()))
    }
}

impl std::error::Error for ConfigError {}

/// `v`, unless it is 0.
fn positive(variable: &'static str, v: u64) -> Result<u64, ConfigError> {
    match v {
        0 => Err(ConfigError::Zero(variable)),
        v => Ok(v),
    }
}

impl Config {
    /// Checks every setting. `env` holds the environment variables clap does not declare (the
    /// providers' own).
    pub fn from_args(
        a: ServeArgs,
        env: &crate::providers_config::Env,
    ) -> Result<Config, ConfigError> {
        // Standalone, Sentinel or Cluster (src/kv); a mistake stops start-up naming the setting.
        let redis = RedisConfig::from_args(&a).map_err(ConfigError::Redis)?;
        let key = a
            .redis
            .encryption_key
            .as_deref()
            .filter(|k| !k.trim().is_empty());
        if let (None, Some(key)) = (&redis, key) {
            // Checked all the same: a typo should not wait for the day Redis is turned on.
            crate::keyring::Keyring::parse(key).map_err(ConfigError::EncryptionKey)?;
        }
        let key = key.map(str::to_string);
        let webhook = crate::events::config::WebhookConfig::from_args(a.webhook.clone())
            .map_err(ConfigError::Webhook)?;
        let api_token = match a.api_token {
            None => None,
            Some(t) if t.trim().len() < 16 || t.trim() != t => return Err(ConfigError::ApiToken),
            Some(t) => Some(Secret::new(t)),
        };
        if a.max_url_bytes < 256 {
            return Err(ConfigError::UrlBytes);
        }
        if a.max_header_bytes < a.max_url_bytes + 256 {
            return Err(ConfigError::HeaderBytes);
        }
        let internal_addr = match a.internal_addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(addr) => Some(
                addr.parse::<std::net::SocketAddr>()
                    .map_err(|_| ConfigError::InternalAddr(addr.to_string()))?,
            ),
        };
        let internal_url = match a.internal_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => Some(
                server_url(url, "--internal-url", "OAUTH_RELAY_INTERNAL_URL")
                    .map_err(ConfigError::InternalUrl)?,
            ),
        };
        let max_connections =
            positive("OAUTH_RELAY_MAX_CONNECTIONS", a.max_connections as u64)? as usize;
        let reserved = a
            .public_reserved_connections
            .saturating_add(a.internal_reserved_connections);
        if internal_addr.is_some() && reserved > max_connections {
            return Err(ConfigError::Reserves {
                reserved,
                max: max_connections,
            });
        }
        let header = crate::client_ip::ForwardedHeader::parse(&a.client_ip_header)
            .ok_or(ConfigError::ClientIpHeader)?;
        let trusted_proxies =
            TrustedProxies::parse(&a.trusted_proxies, header).map_err(ConfigError::TrustedProxy)?;
        let log_level = Level::parse(&a.log_level).ok_or(ConfigError::LogLevel)?;
        let broker = crate::broker_config::BrokerConfig::from_args(a.broker, env)
            .map_err(ConfigError::Broker)?;
        // Connections serve broker sign-ins: off with broker mode.
        let connections = match broker {
            None => None,
            Some(_) => Some(
                crate::connections::config::ConnectionsConfig::from_args(
                    a.connections,
                    redis.is_some(),
                    key.as_deref(),
                )
                .map_err(ConfigError::Connections)?,
            ),
        };
        let uses_file = connections.as_ref().is_some_and(|c| c.uses_file());
        let unused_encryption_key = redis.is_none() && key.is_some() && !uses_file;
        Ok(Config {
            redis,
            host: a.host,
            port: a.port,
            internal_addr,
            internal_url,
            ttl: Duration::from_secs(positive("OAUTH_RELAY_TTL_SECS", a.ttl_secs)?),
            max_pending: positive("OAUTH_RELAY_MAX_PENDING", a.max_pending as u64)? as usize,
            max_pending_per_client: match a.max_pending_per_client {
                None => defaults::max_pending_per_client(a.max_pending),
                Some(n) => positive("OAUTH_RELAY_MAX_PENDING_PER_CLIENT", n as u64)? as usize,
            },
            max_pending_bytes: positive(
                "OAUTH_RELAY_MAX_PENDING_BYTES",
                a.max_pending_bytes as u64,
            )? as usize,
            max_sessions: positive("OAUTH_RELAY_MAX_SESSIONS", a.max_sessions as u64)? as usize,
            api_token,
            require_registered_state: a.require_registered_state,
            max_wait: Duration::from_secs(a.max_wait_secs),
            max_waiters: a.max_waiters,
            max_waiters_per_client: positive(
                "OAUTH_RELAY_MAX_WAITERS_PER_CLIENT",
                a.max_waiters_per_client as u64,
            )? as usize,
            log_level,
            cors: crate::cors::Cors::parse(&a.cors_origins).map_err(ConfigError::Cors)?,
            server: ServerOptions {
                workers: match a.workers {
                    None => defaults::workers(),
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
                max_connections,
                max_connections_per_client: positive(
                    "OAUTH_RELAY_MAX_CONNECTIONS_PER_CLIENT",
                    a.max_connections_per_client as u64,
                )? as usize,
                public_reserved: a.public_reserved_connections,
                internal_reserved: a.internal_reserved_connections,
                trusted_proxies,
                read_timeout: Duration::from_secs(positive(
                    "OAUTH_RELAY_READ_TIMEOUT_SECS",
                    a.read_timeout_secs,
                )?),
                max_url_bytes: a.max_url_bytes,
                shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
                give_up_after: ServerOptions::default().give_up_after,
            },
            broker,
            webhook,
            connections,
            unused_encryption_key,
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
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_config_default() {
        let c = parse(&[]).unwrap();
        let d = Config::default();
        assert_eq!(
            (c.host, c.port, c.ttl, c.max_pending),
            (d.host, d.port, d.ttl, d.max_pending)
        );
        assert_eq!(c.max_pending_per_client, d.max_pending_per_client);
        assert_eq!(c.server.read_timeout, d.server.read_timeout);
        // Everything else the flags and `Default` both set: one source, so always equal.
        assert_eq!(
            (
                c.max_pending_bytes,
                c.max_sessions,
                c.max_wait,
                c.max_waiters
            ),
            (
                d.max_pending_bytes,
                d.max_sessions,
                d.max_wait,
                d.max_waiters
            )
        );
        assert_eq!(
            (c.max_waiters_per_client, c.log_level, &c.cors),
            (d.max_waiters_per_client, d.log_level, &d.cors)
        );
        assert_eq!(c.server, d.server);
        assert_eq!(d.server, ServerOptions::default());
    }

    #[test]
    fn a_clients_share_follows_the_cap_unless_set() {
        assert_eq!(parse(&[]).unwrap().max_pending_per_client, 1_000);
        assert_eq!(
            parse(&["--max-pending", "100"])
                .unwrap()
                .max_pending_per_client,
            10
        );
        assert_eq!(
            parse(&["--max-pending-per-client", "3"])
                .unwrap()
                .max_pending_per_client,
            3
        );
        assert!(parse(&["--max-pending-per-client", "0"])
            .unwrap_err()
            .contains("OAUTH_RELAY_MAX_PENDING_PER_CLIENT"));
    }

    #[test]
    fn server_urls_must_be_usable_http_urls() {
        for (given, base) in [
            ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
            ("https://relay.example/", "https://relay.example"),
            (
                " https://relay.example/oauth/ ",
                "https://relay.example/oauth",
            ),
            ("http://[::1]:8000", "http://[::1]:8000"),
        ] {
            assert_eq!(server_url(given, "--server", "V").unwrap(), base);
        }
        for bad in [
            "not-a-url",
            "relay.example:8000",
            "localhost",
            "",
            "ftp://relay.example",
            "http://",
            "https://relay.example/?x=1",
            "https://relay.example/#top",
            "http://exa mple",
        ] {
            let e = server_url(bad, "--server", "OAUTH_RELAY_SERVER").unwrap_err();
            assert!(
                e.contains("--server") && e.contains("OAUTH_RELAY_SERVER"),
                "{bad:?}: {e}"
            );
        }
    }

    fn explain(args: &[&str]) -> ParseFailure {
        let mut argv = vec!["oauth-relay"];
        argv.extend_from_slice(args);
        let err = Cli::try_parse_from(&argv).unwrap_err();
        let argv: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
        explain_parse_error(&err, &argv)
    }

    /// Random states and handles are base64url: one in 64 begins with `-`, and must still be
    /// read as the value it is, wherever it stands, without swallowing the flags around it.
    #[test]
    fn states_beginning_with_a_hyphen_are_values() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["oauth-relay"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|c| c.command)
        };
        for args in [
            &["wait", "-Ab_c", "--server", "http://r:8001"][..],
            &["wait", "--server", "http://r:8001", "-Ab_c"],
            &["register", "-Ab_c", "--server", "http://r:8001"],
        ] {
            match parse(args) {
                Ok(Some(Command::Wait(w))) => {
                    assert_eq!(
                        (w.state.as_str(), w.server.as_str()),
                        ("-Ab_c", "http://r:8001")
                    )
                }
                Ok(Some(Command::Register(r))) => {
                    assert_eq!(
                        (r.state.as_str(), r.server.as_str()),
                        ("-Ab_c", "http://r:8001")
                    )
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        match parse(&["open", "--audience", "-Ab_c", "--key", "k.jwk"]) {
            Ok(Some(Command::Open(o))) => {
                assert_eq!(o.audience.as_deref(), Some("-Ab_c"));
                assert_eq!(o.key, std::path::PathBuf::from("k.jwk"));
            }
            other => panic!("{other:?}"),
        }
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
    fn refusals_name_the_flag_of_each_variable_once() {
        assert_eq!(
            name_flags("OAUTH_RELAY_TTL_SECS must be at least 1"),
            "OAUTH_RELAY_TTL_SECS (--ttl-secs) must be at least 1"
        );
        assert_eq!(
            name_flags("OAUTH_RELAY_MAX_HEADER_BYTES must be at least OAUTH_RELAY_MAX_URL_BYTES + 256 (OAUTH_RELAY_MAX_URL_BYTES)"),
            "OAUTH_RELAY_MAX_HEADER_BYTES (--max-header-bytes) must be at least OAUTH_RELAY_MAX_URL_BYTES (--max-url-bytes) + 256 (OAUTH_RELAY_MAX_URL_BYTES)"
        );
        // Already named, or no flag to name: unchanged.
        for kept in [
            "--internal-url (or OAUTH_RELAY_INTERNAL_URL) must be an http:// URL",
            "OAUTH_RELAY_PROVIDER_CORP_ISSUER: discovery failed",
            "OAUTH_RELAY_CORS_ORIGINS (--cors-origins): \"x\" is not an origin",
            "no variable here: HTTP 500",
        ] {
            assert_eq!(name_flags(kept), kept);
        }
        assert!(parse(&["--workers", "0"])
            .unwrap_err()
            .starts_with("OAUTH_RELAY_WORKERS (--workers) must be at least 1"));
    }

    /// Start-up refusals are typed; their words are the ones `main` has always logged.
    #[test]
    fn refusals_are_typed_and_worded_as_before() {
        let refused = |args: &[&str]| {
            let mut argv = vec!["oauth-relay"];
            argv.extend_from_slice(args);
            Config::from_args(
                Cli::try_parse_from(argv).unwrap().serve,
                &Default::default(),
            )
            .unwrap_err()
        };
        for (args, error, words) in [
            (
                &["--ttl-secs", "0"][..],
                ConfigError::Zero("OAUTH_RELAY_TTL_SECS"),
                "OAUTH_RELAY_TTL_SECS (--ttl-secs) must be at least 1",
            ),
            (
                &["--max-url-bytes", "100"],
                ConfigError::UrlBytes,
                "OAUTH_RELAY_MAX_URL_BYTES (--max-url-bytes) must be at least 256",
            ),
            (
                &["--api-token", " short "],
                ConfigError::ApiToken,
                "OAUTH_RELAY_API_TOKEN (--api-token) must be at least 16 characters, without surrounding spaces",
            ),
            (
                &["--internal-addr", "localhost"],
                ConfigError::InternalAddr("localhost".into()),
                "OAUTH_RELAY_INTERNAL_ADDR (--internal-addr) must be an IP address and port such as 0.0.0.0:8001, not \"localhost\"",
            ),
            (
                &["--max-connections", "200", "--internal-addr", "127.0.0.1:0"],
                ConfigError::Reserves {
                    reserved: 256,
                    max: 200,
                },
                "OAUTH_RELAY_PUBLIC_RESERVED_CONNECTIONS (--public-reserved-connections) + OAUTH_RELAY_INTERNAL_RESERVED_CONNECTIONS (--internal-reserved-connections) (256) must be at most OAUTH_RELAY_MAX_CONNECTIONS (--max-connections) (200)",
            ),
            (
                &["--trusted-proxies", "ingress"],
                ConfigError::TrustedProxy("ingress".into()),
                "OAUTH_RELAY_TRUSTED_PROXIES (--trusted-proxies) must list IP addresses and CIDRs such as 10.0.0.0/8, separated by commas; \"ingress\" is neither",
            ),
            (
                &["--log-level", "loud"],
                ConfigError::LogLevel,
                "OAUTH_RELAY_LOG_LEVEL (--log-level) must be one of debug, info, warn, error, off",
            ),
            (
                &["--redis-cluster-nodes", "a:7000"],
                ConfigError::Redis(
                    "OAUTH_RELAY_REDIS_CLUSTER_NODES needs OAUTH_RELAY_ENCRYPTION_KEY: secrets are never stored in Redis in the clear".into(),
                ),
                "OAUTH_RELAY_REDIS_CLUSTER_NODES (--redis-cluster-nodes) needs OAUTH_RELAY_ENCRYPTION_KEY (--encryption-key): secrets are never stored in Redis in the clear",
            ),
        ] {
            let got = refused(args);
            assert_eq!(got, error, "{args:?}");
            assert_eq!(got.to_string(), words, "{args:?}");
        }
        // Another part's words are kept, and its variables named with their flags too.
        let e = refused(&["--cors-origins", "ftp://x"]);
        assert!(matches!(e, ConfigError::Cors(_)), "{e:?}");
        assert!(e
            .to_string()
            .contains("OAUTH_RELAY_CORS_ORIGINS (--cors-origins)"));
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

    #[test]
    fn shares_and_trusted_proxies_are_checked() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.server.max_connections_per_client,
            defaults::MAX_CONNECTIONS_PER_CLIENT
        );
        assert_eq!(c.max_waiters_per_client, defaults::MAX_WAITERS_PER_CLIENT);
        assert!(
            c.server.trusted_proxies.is_empty(),
            "nobody is trusted by default"
        );
        let c = parse(&["--trusted-proxies", "10.0.0.0/8, 192.0.2.7,fd00::/8"]).unwrap();
        assert!(c.server.trusted_proxies.trusts("10.3.2.1".parse().unwrap()));
        assert!(!c
            .server
            .trusted_proxies
            .trusts("192.0.2.8".parse().unwrap()));
        let e = parse(&["--trusted-proxies", "10.0.0.0/8,ingress"]).unwrap_err();
        assert!(
            e.contains("OAUTH_RELAY_TRUSTED_PROXIES") && e.contains("ingress"),
            "{e}"
        );
        assert!(parse(&["--client-ip-header", "x-real-ip"])
            .unwrap_err()
            .contains("OAUTH_RELAY_CLIENT_IP_HEADER"));
        for zero in ["--max-connections-per-client", "--max-waiters-per-client"] {
            assert!(
                parse(&[zero, "0"]).unwrap_err().contains("at least 1"),
                "{zero}"
            );
        }
        // The reserves split one cap, so they must fit in it, but only matter when split.
        let small = ["--max-connections", "200", "--internal-addr", "127.0.0.1:0"];
        let e = parse(&small).unwrap_err();
        assert!(
            e.contains("OAUTH_RELAY_INTERNAL_RESERVED_CONNECTIONS")
                && e.contains("OAUTH_RELAY_MAX_CONNECTIONS"),
            "{e}"
        );
        assert!(parse(&["--max-connections", "200"]).is_ok());
        let fitted = [&small[..], &["--internal-reserved-connections", "72"]].concat();
        assert_eq!(parse(&fitted).unwrap().server.internal_reserved, 72);
    }

    #[test]
    fn redis_topologies_are_served_and_each_needs_the_encryption_key() {
        let key = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let sentinel = ["--redis-sentinels", "s:26379", "--redis-master-name", "m"];
        let e = parse(&sentinel).unwrap_err();
        assert!(
            e.contains("OAUTH_RELAY_REDIS_SENTINELS") && e.contains("OAUTH_RELAY_ENCRYPTION_KEY"),
            "{e}"
        );
        let c = parse(&[&sentinel[..], &["--encryption-key", key]].concat()).unwrap();
        let r = c.redis.unwrap();
        assert_eq!(r.kv.kind(), "sentinel");
        assert_eq!(r.durability.replicas, 1, "a replicated Redis waits for one");
        let e = parse(&["--redis-cluster-nodes", "a:7000"]).unwrap_err();
        assert!(e.contains("OAUTH_RELAY_REDIS_CLUSTER_NODES"), "{e}");
        let c = parse(&[
            "--redis-cluster-nodes",
            "a:7000",
            "--encryption-key",
            key,
            "--redis-min-replicas-acked",
            "2",
            "--redis-replica-wait-ms",
            "50",
        ])
        .unwrap();
        let r = c.redis.unwrap();
        assert_eq!(r.kv.kind(), "cluster");
        assert_eq!(
            r.durability,
            Durability {
                replicas: 2,
                wait: Duration::from_millis(50)
            }
        );
        let c = parse(&["--redis-url", "redis://r:6379/0", "--encryption-key", key]).unwrap();
        assert_eq!(c.redis.unwrap().durability.replicas, 0, "one server");
        let e = parse(&["--redis-master-name", "m"]).unwrap_err();
        assert!(e.contains("OAUTH_RELAY_REDIS_SENTINELS"), "{e}");
        let e = parse(&["--redis-min-replicas-acked", "1"]).unwrap_err();
        assert!(e.contains("OAUTH_RELAY_REDIS_URL"), "{e}");
        let e = parse(&[
            "--redis-url",
            "redis://r",
            "--encryption-key",
            key,
            "--redis-replica-wait-ms",
            "0",
        ])
        .unwrap_err();
        assert!(e.contains("OAUTH_RELAY_REDIS_REPLICA_WAIT_MS"), "{e}");
    }
}
