//! Every default of the service and its commands, each in one place (the flags, `Config`'s and
//! `ServerOptions`' `Default`s and the Redis layer all take theirs from here).

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
/// One event loop per CPU (two when the count is unknown).
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
pub const READ_TIMEOUT_SECS: u64 = 10;
pub const SHUTDOWN_GRACE_SECS: u64 = 5;
/// Not a setting: how long accepting may keep failing (descriptors exhausted) before the
/// process exits non-zero to be restarted.
pub const ACCEPT_GIVE_UP_SECS: u64 = 60;
pub const LOG_LEVEL: &str = "info";
pub const SERVER_URL: &str = "http://127.0.0.1:8000";
/// How long each of check-deployment's requests may take (the service's answer to
/// GET /deployment includes its own calls to the providers, at most 5 s).
pub const CHECK_TIMEOUT_SECS: u64 = 30;
pub const REDIS_PREFIX: &str = "oauth-relay:";
pub const REDIS_TIMEOUT_MS: u64 = 500;
/// Any origin, as the Python server answered.
pub const CORS_ORIGINS: &str = "*";
/// The port of a Redis node given without one (OAUTH_RELAY_REDIS_CLUSTER_NODES).
pub const REDIS_PORT: u16 = 6379;
/// The port of a sentinel given without one (OAUTH_RELAY_REDIS_SENTINELS).
pub const REDIS_SENTINEL_PORT: u16 = 26379;
/// Replicas that must have a take before it is handed out: one where Redis fails over
/// (Sentinel, Cluster), so a failover cannot undo a take that was handed out; none on one
/// server, which has nothing to fail over to.
pub fn redis_min_replicas_acked(replicated: bool) -> u32 {
    u32::from(replicated)
}
/// How long a take waits for those replicas: a replica on the same network has it within a
/// millisecond; past this it is missing or far behind, and the take fails closed (503).
pub const REDIS_REPLICA_WAIT_MS: u64 = 500;
