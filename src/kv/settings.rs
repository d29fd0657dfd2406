//! Where Redis is and how to talk to it: the `OAUTH_RELAY_REDIS_*` settings checked into a
//! `KvSettings` (exactly one topology: one server, a primary found through Sentinel, or a
//! Redis Cluster), with errors that name the flag and the variable to fix.

use crate::defaults;
use crate::secret::Secret;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `OAUTH_RELAY_REDIS_*` flags (and the encryption key Redis requires), flattened into the
/// server's flags (`config::ServeArgs`): declared here, with the rest of what this module owns.
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
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
    /// Redis Sentinels to ask for the primary, comma-separated host:port (port defaults to
    /// 26379), with --redis-master-name; instead of OAUTH_RELAY_REDIS_URL.
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
    /// OAUTH_RELAY_REDIS_URL.
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
    /// Replicas that must acknowledge (WAIT) a take (a callback retrieval, an OAuth state, a
    /// token hand-off, a refresh intent) before it is used; fewer within
    /// --redis-replica-wait-ms: 503, nothing handed out. Default: 1 with Sentinel or Cluster,
    /// 0 with OAUTH_RELAY_REDIS_URL. 0: no WAIT (a failover may then undo a take).
    #[arg(long, env = "OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED")]
    pub redis_min_replicas_acked: Option<u32>,
    /// Milliseconds a take waits for OAUTH_RELAY_REDIS_MIN_REPLICAS_ACKED replicas.
    #[arg(long, env = "OAUTH_RELAY_REDIS_REPLICA_WAIT_MS", default_value_t = defaults::REDIS_REPLICA_WAIT_MS)]
    pub redis_replica_wait_ms: u64,
}

/// A setting, as a person sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flag: &'static str,
    pub variable: &'static str,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.variable, self.flag)
    }
}

const fn setting(flag: &'static str, variable: &'static str) -> Setting {
    Setting { flag, variable }
}

pub const URL: Setting = setting("--redis-url", "OAUTH_RELAY_REDIS_URL");
pub const SENTINELS: Setting = setting("--redis-sentinels", "OAUTH_RELAY_REDIS_SENTINELS");
pub const MASTER_NAME: Setting = setting("--redis-master-name", "OAUTH_RELAY_REDIS_MASTER_NAME");
pub const SENTINEL_PASSWORD_FILE: Setting = setting(
    "--redis-sentinel-password-file",
    "OAUTH_RELAY_REDIS_SENTINEL_PASSWORD_FILE",
);
pub const SENTINEL_USERNAME: Setting = setting(
    "--redis-sentinel-username",
    "OAUTH_RELAY_REDIS_SENTINEL_USERNAME",
);
pub const SENTINEL_TLS: Setting = setting("--redis-sentinel-tls", "OAUTH_RELAY_REDIS_SENTINEL_TLS");
pub const CLUSTER_NODES: Setting =
    setting("--redis-cluster-nodes", "OAUTH_RELAY_REDIS_CLUSTER_NODES");
pub const USERNAME: Setting = setting("--redis-username", "OAUTH_RELAY_REDIS_USERNAME");
pub const TLS: Setting = setting("--redis-tls", "OAUTH_RELAY_REDIS_TLS");
pub const PASSWORD_FILE: Setting =
    setting("--redis-password-file", "OAUTH_RELAY_REDIS_PASSWORD_FILE");
pub const CA_FILE: Setting = setting("--redis-ca-file", "OAUTH_RELAY_REDIS_CA_FILE");
pub const PREFIX: Setting = setting("--redis-prefix", "OAUTH_RELAY_REDIS_PREFIX");
pub const TIMEOUT_MS: Setting = setting("--redis-timeout-ms", "OAUTH_RELAY_REDIS_TIMEOUT_MS");

/// Why the Redis settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsError {
    /// More than one of the three topologies is configured.
    Topologies(Vec<Setting>),
    /// `setting` is set but means nothing without `needs`.
    Needs {
        setting: Setting,
        needs: Setting,
    },
    /// `setting` does not apply to the topology chosen by `chosen`.
    DoesNotApply {
        setting: Setting,
        chosen: Setting,
    },
    Invalid {
        setting: Setting,
        reason: String,
    },
    Unreadable {
        setting: Setting,
        path: PathBuf,
        error: String,
    },
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsError::Topologies(set) => write!(
                f,
                "exactly one Redis topology may be configured, but {} are set: use {URL} for one server, {SENTINELS} for Sentinel, or {CLUSTER_NODES} for a Redis Cluster",
                set.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" and ")
            ),
            SettingsError::Needs { setting, needs } => {
                write!(f, "{setting} is set, so {needs} must be set too")
            }
            SettingsError::DoesNotApply { setting, chosen } => {
                write!(f, "{setting} does not apply when Redis is configured with {chosen}")
            }
            SettingsError::Invalid { setting, reason } => write!(f, "{setting}: {reason}"),
            SettingsError::Unreadable {
                setting,
                path,
                error,
            } => write!(f, "{setting} {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for SettingsError {}

/// A host and port, as given or as Redis announced it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl HostPort {
    /// `host:port`, `[v6]:port`, or a host alone (then `default_port`).
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort, String> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?} has no closing ]"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{s:?} is not host:port")),
            }
        } else {
            match s.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(format!("{s:?}: write an IPv6 address as [address]:port"))
                }
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(format!("{s:?} is not host:port"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{s:?} has no valid port"))?,
        };
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

/// Checked settings for [`Kv::open`](super::Kv::open).
#[derive(Debug, Clone)]
pub struct KvSettings {
    pub topology: Topology,
    /// ACL user for the data nodes (Sentinel, Cluster; a standalone URL carries its own).
    pub username: Option<String>,
    /// Password of the data nodes; with a standalone URL it replaces the URL's.
    pub password: Option<Secret>,
    /// PEM of the CA to trust for every TLS connection (data nodes and sentinels); `None`: the
    /// public web roots.
    pub ca_pem: Option<Vec<u8>>,
    pub prefix: String,
    /// The longest any call may take, connecting, looking up the primary and retrying included
    /// (a durable call adds its WAIT time).
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Topology {
    /// One server, `redis://` or `rediss://` (user, password and database may be in the URL).
    Standalone {
        url: Secret,
    },
    Sentinel(SentinelSettings),
    Cluster {
        /// Nodes to learn the cluster from; the rest is discovered.
        seeds: Vec<HostPort>,
        tls: bool,
    },
}

#[derive(Debug, Clone)]
pub struct SentinelSettings {
    pub sentinels: Vec<HostPort>,
    pub master_name: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS to the sentinels.
    pub tls: bool,
    /// TLS to the primary they name.
    pub data_tls: bool,
}

impl KvSettings {
    /// `topology` with every other setting at its default (tests, benchmarks).
    pub fn new(topology: Topology) -> KvSettings {
        KvSettings {
            topology,
            username: None,
            password: None,
            ca_pem: None,
            prefix: defaults::REDIS_PREFIX.into(),
            timeout: Duration::from_millis(defaults::REDIS_TIMEOUT_MS),
        }
    }

    /// The topology's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self.topology {
            Topology::Standalone { .. } => "standalone",
            Topology::Sentinel(_) => "sentinel",
            Topology::Cluster { .. } => "cluster",
        }
    }

    /// Checks the Redis settings; `Ok(None)` when none of the three topologies is configured.
    pub fn from_args(a: &RedisArgs) -> Result<Option<KvSettings>, SettingsError> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        let (url, sentinels, cluster) = (
            given(&a.redis_url),
            given(&a.redis_sentinels),
            given(&a.redis_cluster_nodes),
        );
        let chosen: Vec<Setting> = [
            (url.is_some(), URL),
            (sentinels.is_some(), SENTINELS),
            (cluster.is_some(), CLUSTER_NODES),
        ]
        .into_iter()
        .filter_map(|(set, s)| set.then_some(s))
        .collect();
        let sentinel_only = [
            (given(&a.redis_master_name).is_some(), MASTER_NAME),
            (
                a.redis_sentinel_password_file.is_some(),
                SENTINEL_PASSWORD_FILE,
            ),
            (
                given(&a.redis_sentinel_username).is_some(),
                SENTINEL_USERNAME,
            ),
            (a.redis_sentinel_tls, SENTINEL_TLS),
        ];
        let Some(&topology) = chosen.first() else {
            // Nothing configured: whatever else is set would be ignored silently.
            for (set, s) in sentinel_only {
                if set {
                    return Err(SettingsError::Needs {
                        setting: s,
                        needs: SENTINELS,
                    });
                }
            }
            return Ok(None);
        };
        if chosen.len() > 1 {
            return Err(SettingsError::Topologies(chosen));
        }
        if topology != SENTINELS {
            if let Some((_, s)) = sentinel_only.iter().find(|(set, _)| *set) {
                return Err(SettingsError::DoesNotApply {
                    setting: *s,
                    chosen: topology,
                });
            }
        }
        if topology == URL {
            for (set, s) in [
                (a.redis_tls, TLS),
                (given(&a.redis_username).is_some(), USERNAME),
            ] {
                if set {
                    return Err(SettingsError::DoesNotApply {
                        setting: s,
                        chosen: URL,
                    });
                }
            }
        }
        if a.redis_timeout_ms == 0 {
            return Err(SettingsError::Invalid {
                setting: TIMEOUT_MS,
                reason: "must be at least 1".into(),
            });
        }
        let topology = match (url, sentinels, cluster) {
            (Some(url), _, _) => {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(SettingsError::Invalid {
                        setting: URL,
                        reason: "must start with redis:// or rediss://".into(),
                    });
                }
                Topology::Standalone {
                    url: Secret::new(url),
                }
            }
            (_, Some(list), _) => Topology::Sentinel(SentinelSettings {
                sentinels: host_ports(&list, SENTINELS, defaults::REDIS_SENTINEL_PORT)?,
                master_name: given(&a.redis_master_name).ok_or(SettingsError::Needs {
                    setting: SENTINELS,
                    needs: MASTER_NAME,
                })?,
                username: given(&a.redis_sentinel_username),
                password: a
                    .redis_sentinel_password_file
                    .as_deref()
                    .map(|p| read_secret(p, SENTINEL_PASSWORD_FILE))
                    .transpose()?,
                tls: a.redis_sentinel_tls,
                data_tls: a.redis_tls,
            }),
            (_, _, Some(list)) => {
                let (seeds, tls) = cluster_nodes(&list, a.redis_tls)?;
                if a.redis_prefix.contains(['{', '}']) {
                    return Err(SettingsError::Invalid {
                        setting: PREFIX,
                        reason: "must not contain { or } on a Redis Cluster: keys are grouped into slots by what is between braces".into(),
                    });
                }
                Topology::Cluster { seeds, tls }
            }
            (None, None, None) => unreachable!("a topology was chosen above"),
        };
        Ok(Some(KvSettings {
            topology,
            username: given(&a.redis_username),
            password: a
                .redis_password_file
                .as_deref()
                .map(|p| read_secret(p, PASSWORD_FILE))
                .transpose()?,
            ca_pem: a
                .redis_ca_file
                .as_deref()
                .map(|p| {
                    std::fs::read(p).map_err(|e| SettingsError::Unreadable {
                        setting: CA_FILE,
                        path: p.to_path_buf(),
                        error: e.to_string(),
                    })
                })
                .transpose()?,
            prefix: a.redis_prefix.clone(),
            timeout: Duration::from_millis(a.redis_timeout_ms),
        }))
    }
}

fn read_secret(path: &Path, setting: Setting) -> Result<Secret, SettingsError> {
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
        .map_err(|e| SettingsError::Unreadable {
            setting,
            path: path.to_path_buf(),
            error: e.to_string(),
        })
}

fn host_ports(
    list: &str,
    setting: Setting,
    default_port: u16,
) -> Result<Vec<HostPort>, SettingsError> {
    let all: Vec<HostPort> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| HostPort::parse(s, default_port))
        .collect::<Result<_, _>>()
        .map_err(|reason| SettingsError::Invalid { setting, reason })?;
    if all.is_empty() {
        return Err(SettingsError::Invalid {
            setting,
            reason: "names no host".into(),
        });
    }
    Ok(all)
}

/// Cluster nodes as URLs or host:port; TLS when any says rediss:// or --redis-tls is set, and
/// then all must agree. Credentials and databases stay out of the list: a cluster has only
/// database 0, and passwords belong in a file.
fn cluster_nodes(list: &str, tls_flag: bool) -> Result<(Vec<HostPort>, bool), SettingsError> {
    let invalid = |reason: String| SettingsError::Invalid {
        setting: CLUSTER_NODES,
        reason,
    };
    let mut schemes = Vec::new();
    let mut bare = Vec::new();
    for node in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (scheme, rest) = match node.split_once("://") {
            Some((scheme @ ("redis" | "rediss"), rest)) => (Some(scheme == "rediss"), rest),
            Some((other, _)) => {
                return Err(invalid(format!("{other}:// is not redis:// or rediss://")))
            }
            None => (None, node),
        };
        if rest.contains('@') {
            return Err(invalid(
                "put no user or password in the node list: use OAUTH_RELAY_REDIS_USERNAME and OAUTH_RELAY_REDIS_PASSWORD_FILE".into(),
            ));
        }
        let addr = match rest.split_once('/') {
            None => rest,
            Some((addr, "" | "0")) => addr,
            Some(_) => return Err(invalid("a Redis Cluster has only database 0".into())),
        };
        bare.push(addr.to_string());
        schemes.extend(scheme);
    }
    let tls = schemes.iter().any(|t| *t) || tls_flag;
    if schemes.iter().any(|t| *t != tls) {
        return Err(invalid(if tls_flag {
            "redis:// nodes contradict OAUTH_RELAY_REDIS_TLS".into()
        } else {
            "mixes redis:// and rediss:// nodes".into()
        }));
    }
    Ok((
        host_ports(&bare.join(","), CLUSTER_NODES, defaults::REDIS_PORT)?,
        tls,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Option<KvSettings>, SettingsError> {
        let mut argv = vec!["oauth-relay"];
        argv.extend_from_slice(args);
        let cli = crate::config::Cli::try_parse_from(argv).expect("clap accepts the flags");
        KvSettings::from_args(&cli.serve.redis)
    }

    #[test]
    fn no_topology_no_settings() {
        assert!(parse(&[]).unwrap().is_none());
        assert_eq!(
            parse(&["--redis-master-name", "m"]).unwrap_err(),
            SettingsError::Needs {
                setting: MASTER_NAME,
                needs: SENTINELS
            }
        );
    }

    #[test]
    fn the_url_stays_as_it_is() {
        let s = parse(&["--redis-url", "rediss://u:p@redis:6380/2"])
            .unwrap()
            .unwrap();
        assert_eq!(s.kind(), "standalone");
        let Topology::Standalone { url } = &s.topology else {
            panic!()
        };
        assert_eq!(url.expose(), "rediss://u:p@redis:6380/2");
        assert!(
            !format!("{s:?}").contains("u:p"),
            "the URL may hold a password"
        );
        let e = parse(&["--redis-url", "http://redis"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("OAUTH_RELAY_REDIS_URL (--redis-url)"),
            "{e}"
        );
        let e = parse(&["--redis-url", "redis://r", "--redis-tls"]).unwrap_err();
        assert_eq!(
            e,
            SettingsError::DoesNotApply {
                setting: TLS,
                chosen: URL
            }
        );
    }

    #[test]
    fn exactly_one_topology() {
        let e = parse(&["--redis-url", "redis://r", "--redis-cluster-nodes", "a:1"]).unwrap_err();
        assert_eq!(e, SettingsError::Topologies(vec![URL, CLUSTER_NODES]));
        let words = e.to_string();
        assert!(
            words.contains("exactly one")
                && words.contains("OAUTH_RELAY_REDIS_URL (--redis-url)")
                && words.contains("OAUTH_RELAY_REDIS_CLUSTER_NODES (--redis-cluster-nodes)"),
            "{words}"
        );
        let e = parse(&["--redis-cluster-nodes", "a:1", "--redis-sentinel-tls"]).unwrap_err();
        assert_eq!(
            e,
            SettingsError::DoesNotApply {
                setting: SENTINEL_TLS,
                chosen: CLUSTER_NODES
            }
        );
    }

    #[test]
    fn sentinels() {
        let dir = std::env::temp_dir().join(format!("kv-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sentinel-password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let s = parse(&[
            "--redis-sentinels",
            "10.0.0.1, sentinel-b:26380,[::1]:5000",
            "--redis-master-name",
            "mymaster",
            "--redis-sentinel-password-file",
            file.to_str().unwrap(),
            "--redis-sentinel-tls",
            "--redis-tls",
            "--redis-username",
            "relay",
        ])
        .unwrap()
        .unwrap();
        let Topology::Sentinel(t) = &s.topology else {
            panic!()
        };
        let shown: Vec<String> = t.sentinels.iter().map(|h| h.to_string()).collect();
        assert_eq!(shown, ["10.0.0.1:26379", "sentinel-b:26380", "[::1]:5000"]);
        assert_eq!(t.master_name, "mymaster");
        assert_eq!(t.password.as_ref().unwrap().expose(), "s3cret");
        assert!(t.tls && t.data_tls);
        assert_eq!(s.username.as_deref(), Some("relay"));
        assert_eq!(
            parse(&["--redis-sentinels", "a"]).unwrap_err(),
            SettingsError::Needs {
                setting: SENTINELS,
                needs: MASTER_NAME
            }
        );
        let e = parse(&["--redis-sentinels", "a:x", "--redis-master-name", "m"]).unwrap_err();
        assert!(e.to_string().contains("OAUTH_RELAY_REDIS_SENTINELS"), "{e}");
        let e = parse(&[
            "--redis-sentinels",
            "a",
            "--redis-master-name",
            "m",
            "--redis-sentinel-password-file",
            "/nonexistent/file",
        ])
        .unwrap_err();
        assert!(
            matches!(e, SettingsError::Unreadable { setting, .. } if setting == SENTINEL_PASSWORD_FILE)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cluster_nodes_as_urls_or_host_ports() {
        let s = parse(&["--redis-cluster-nodes", "redis://a:7000,b:7001, c"])
            .unwrap()
            .unwrap();
        let Topology::Cluster { seeds, tls } = &s.topology else {
            panic!()
        };
        assert!(!tls);
        assert_eq!(
            seeds.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            ["a:7000", "b:7001", "c:6379"]
        );
        let s = parse(&["--redis-cluster-nodes", "rediss://a:7000/,b:7001"])
            .unwrap()
            .unwrap();
        assert!(matches!(s.topology, Topology::Cluster { tls: true, .. }));
        for (bad, words) in [
            ("redis://a:1,rediss://b:2", "mixes"),
            ("redis://a:1/3", "database 0"),
            ("redis://user:pw@a:1", "PASSWORD_FILE"),
            ("http://a:1", "http://"),
            ("a:0", "port"),
        ] {
            let e = parse(&["--redis-cluster-nodes", bad])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(words) && e.contains("OAUTH_RELAY_REDIS_CLUSTER_NODES"),
                "{bad}: {e}"
            );
            assert!(!e.contains("pw"), "{e}");
        }
        let e = parse(&["--redis-cluster-nodes", "redis://a:1", "--redis-tls"]).unwrap_err();
        assert!(e.to_string().contains("OAUTH_RELAY_REDIS_TLS"), "{e}");
        let e = parse(&["--redis-cluster-nodes", "a", "--redis-prefix", "{x}:"]).unwrap_err();
        assert!(e.to_string().contains("OAUTH_RELAY_REDIS_PREFIX"), "{e}");
    }
}
