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
    /// A client's share of OAUTH_RELAY_MAX_PENDING, unless OAUTH_RELAY_MAX_PENDING_PER_CLIENT
    /// says otherwise: 1 % of it (1,000 of the default 100,000: far more sign-ins than a NAT full
    /// of people has under way at once; one address needs 100 like it to fill the cap), and at
    /// least 10.
    pub fn max_pending_per_client(max_pending: usize) -> usize {
        (max_pending / 100).max(10)
    }
    pub const MAX_URL_BYTES: usize = 8 * 1024;
    pub const MAX_WAIT_SECS: u64 = 60;
    pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
    pub const MAX_SESSIONS: usize = 2_000;
    pub const MAX_WAITERS: usize = 1_024;
    pub const MAX_CONNECTIONS: usize = 1_024;
    /// A quarter of the cap: far more than a browser (6) or a NAT's sign-ins hold at once, and a
    /// single client still leaves three quarters to everyone else.
    pub const MAX_CONNECTIONS_PER_CLIENT: usize = 256;
    /// An eighth of the cap each: the probes, `/metrics` and callers always get into the
    /// internal listener whatever floods the public one, and browsers into the public one
    /// whatever the callers hold.
    pub const PUBLIC_RESERVED_CONNECTIONS: usize = 128;
    pub const INTERNAL_RESERVED_CONNECTIONS: usize = 128;
    /// An eighth of the waiter cap: a caller waiting on that many sign-ins at once is a big
    /// one, and below its connection share, so it can still register and retrieve.
    pub const MAX_WAITERS_PER_CLIENT: usize = 128;
    /// Nobody's forwarding header is believed until proxies are named.
    pub const TRUSTED_PROXIES: &str = "";
    pub const CLIENT_IP_HEADER: &str = "x-forwarded-for";
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
    /// Any origin, as the Python server answered.
    pub const CORS_ORIGINS: &str = "*";
    /// The port of a Redis node given without one (OAUTH_RELAY_REDIS_CLUSTER_NODES).
    pub const REDIS_PORT: u16 = 6379;
    /// The port of a sentinel given without one (OAUTH_RELAY_REDIS_SENTINELS).
    pub const REDIS_SENTINEL_PORT: u16 = 26379;
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
    /// Origins of web pages that may call the retrieval endpoints (/api/callback/{state},
    /// /api/states) from a browser: `*` (any), or a comma-separated list such as
    /// https://app.example.com,http://localhost:3000 (each answer then names the page's origin
    /// when listed); blank: none.
    #[arg(long, env = "OAUTH_RELAY_CORS_ORIGINS", default_value = defaults::CORS_ORIGINS)]
    pub cors_origins: String,
    /// Redis Sentinels to ask for the primary, comma-separated host:port (port defaults to
    /// 26379), with --redis-master-name; instead of OAUTH_RELAY_REDIS_URL. Parsed and checked,
    /// not used by the store yet.
    #[arg(long, env = "OAUTH_RELAY_REDIS_SENTINELS")]
    pub redis_sentinels: Option<String>,
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    #[arg(long, env = "OAUTH_RELAY_REDIS_MASTER_NAME")]
    pub redis_master_name: Option<String>,
    /// File holding the sentinels' password (their `requirepass`), when they have one.
    #[arg(long, env = "OAUTH_RELAY_REDIS_SENTINEL_PASSWORD_FILE")]
    pub redis_sentinel_password_file: Option<std::path::PathBuf>,
    /// ACL user for the sentinels (with --redis-sentinel-password-file); unset: `default`.
    #[arg(long, env = "OAUTH_RELAY_REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,
    /// Talk TLS to the sentinels, trusting OAUTH_RELAY_REDIS_CA_FILE (or the public web roots).
    #[arg(long, env = "OAUTH_RELAY_REDIS_SENTINEL_TLS")]
    pub redis_sentinel_tls: bool,
    /// Redis Cluster nodes to learn the cluster from, comma-separated `redis://host:port`,
    /// `rediss://host:port` or `host:port` (port defaults to 6379); instead of
    /// OAUTH_RELAY_REDIS_URL. Parsed and checked, not used by the store yet.
    #[arg(long, env = "OAUTH_RELAY_REDIS_CLUSTER_NODES")]
    pub redis_cluster_nodes: Option<String>,
    /// ACL user for the Redis servers found through the sentinels or the cluster (with
    /// OAUTH_RELAY_REDIS_PASSWORD_FILE); unset: `default`. With OAUTH_RELAY_REDIS_URL, put the
    /// user in the URL.
    #[arg(long, env = "OAUTH_RELAY_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Talk TLS to the Redis servers found through the sentinels or the cluster, trusting
    /// OAUTH_RELAY_REDIS_CA_FILE (or the public web roots). With OAUTH_RELAY_REDIS_URL, use
    /// rediss:// instead.
    #[arg(long, env = "OAUTH_RELAY_REDIS_TLS")]
    pub redis_tls: bool,
    #[command(flatten)]
    pub broker: crate::broker_config::BrokerArgs,
    #[command(flatten)]
    pub webhook: crate::events::config::WebhookArgs,
    #[command(flatten)]
    pub connections: crate::connections::config::ConnectionsArgs,
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
    #[arg(long, value_name = "STATE")]
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
    pub server: server::Options,
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
            max_pending_per_client: defaults::max_pending_per_client(defaults::MAX_PENDING),
            max_pending_bytes: defaults::MAX_PENDING_BYTES,
            max_sessions: defaults::MAX_SESSIONS,
            api_token: None,
            require_registered_state: false,
            max_wait: Duration::from_secs(defaults::MAX_WAIT_SECS),
            max_waiters: defaults::MAX_WAITERS,
            max_waiters_per_client: defaults::MAX_WAITERS_PER_CLIENT,
            log_level: Level::Info,
            cors: crate::cors::Cors::Any,
            server: server::Options {
                read_timeout: Duration::from_secs(defaults::READ_TIMEOUT_SECS),
                max_url_bytes: defaults::MAX_URL_BYTES,
                max_header_bytes: defaults::MAX_HEADER_BYTES,
                max_headers: defaults::MAX_HEADERS,
                max_body_bytes: defaults::MAX_BODY_BYTES,
                max_connections: defaults::MAX_CONNECTIONS,
                max_connections_per_client: defaults::MAX_CONNECTIONS_PER_CLIENT,
                public_reserved: defaults::PUBLIC_RESERVED_CONNECTIONS,
                internal_reserved: defaults::INTERNAL_RESERVED_CONNECTIONS,
                blocking_threads: defaults::BLOCKING_THREADS,
                shutdown_grace: Duration::from_secs(defaults::SHUTDOWN_GRACE_SECS),
                ..server::Options::default()
            },
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

impl Config {
    /// Checks every setting; the error names the variable to fix and its flag. `env` holds the
    /// environment variables clap does not declare (the providers' own).
    pub fn from_args(a: ServeArgs, env: &crate::providers_config::Env) -> Result<Config, String> {
        Config::checked(a, env).map_err(|message| name_flags(&message))
    }

    fn checked(a: ServeArgs, env: &crate::providers_config::Env) -> Result<Config, String> {
        let redis = RedisConfig::from_args(&a)?;
        // The Redis layer's settings (src/kv) are checked here, so a mistake stops start-up.
        // The store runs on OAUTH_RELAY_REDIS_URL only, so far: Sentinel or Cluster settings
        // are refused rather than leave state in memory without a word.
        if let Some(kv) = crate::kv::KvSettings::from_args(&a).map_err(|e| e.to_string())? {
            use crate::kv::settings::{Topology, CLUSTER_NODES, SENTINELS};
            let chosen = match kv.topology {
                Topology::Standalone { .. } => None,
                Topology::Sentinel(_) => Some(SENTINELS),
                Topology::Cluster { .. } => Some(CLUSTER_NODES),
            };
            if let Some(chosen) = chosen {
                return Err(format!("{chosen} is understood, but this version keeps its state on one Redis only: set OAUTH_RELAY_REDIS_URL instead"));
            }
        }
        let key = a.encryption_key.as_deref().filter(|k| !k.trim().is_empty());
        if let (None, Some(key)) = (&redis, key) {
            // Checked all the same: a typo should not wait for the day Redis is turned on.
            crate::keyring::Keyring::parse(key)?;
        }
        let key = key.map(str::to_string);
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
        let max_connections =
            positive("OAUTH_RELAY_MAX_CONNECTIONS", a.max_connections as u64)? as usize;
        let reserved = a
            .public_reserved_connections
            .saturating_add(a.internal_reserved_connections);
        if internal_addr.is_some() && reserved > max_connections {
            return Err(format!(
                "OAUTH_RELAY_PUBLIC_RESERVED_CONNECTIONS + OAUTH_RELAY_INTERNAL_RESERVED_CONNECTIONS ({reserved}) must be at most OAUTH_RELAY_MAX_CONNECTIONS ({max_connections})"
            ));
        }
        let header = crate::client_ip::ForwardedHeader::parse(&a.client_ip_header)
            .ok_or("OAUTH_RELAY_CLIENT_IP_HEADER must be x-forwarded-for or forwarded")?;
        let trusted_proxies = crate::client_ip::TrustedProxies::parse(&a.trusted_proxies, header)
            .map_err(|entry| {
                format!("OAUTH_RELAY_TRUSTED_PROXIES must list IP addresses and CIDRs such as 10.0.0.0/8, separated by commas; {entry:?} is neither")
            })?;
        let log_level = Level::parse(&a.log_level)
            .ok_or("OAUTH_RELAY_LOG_LEVEL must be one of debug, info, warn, error, off")?;
        let broker = crate::broker_config::BrokerConfig::from_args(a.broker, env)?;
        // Connections serve broker sign-ins: off with broker mode.
        let connections = match broker {
            None => None,
            Some(_) => Some(crate::connections::config::ConnectionsConfig::from_args(
                a.connections,
                redis.is_some(),
                key.as_deref(),
            )?),
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
            cors: crate::cors::Cors::parse(&a.cors_origins)?,
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
                ..Config::default().server
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
    fn redis_topologies_not_served_yet_are_refused() {
        let e = parse(&["--redis-sentinels", "s:26379", "--redis-master-name", "m"]).unwrap_err();
        assert!(
            e.contains("OAUTH_RELAY_REDIS_SENTINELS") && e.contains("OAUTH_RELAY_REDIS_URL"),
            "{e}"
        );
        let e = parse(&["--redis-cluster-nodes", "a:7000"]).unwrap_err();
        assert!(e.contains("OAUTH_RELAY_REDIS_CLUSTER_NODES"), "{e}");
        let e = parse(&["--redis-master-name", "m"]).unwrap_err();
        assert!(e.contains("OAUTH_RELAY_REDIS_SENTINELS"), "{e}");
    }
}
