//! Start-up and shutdown of `serve`: the listeners, the store and its sweeper, the broker and
//! its providers, the completion events, the app, the server and the signals that stop it; and
//! the typed reason the process ends non-zero.

use crate::app;
use crate::broker;
use crate::budget;
use crate::config;
use crate::config::ConfigError;
use crate::connections;
use crate::connections::config::KeptIn;
use crate::events;
use crate::http;
use crate::kv;
use crate::logging;
use crate::outbound;
use crate::provider;
use crate::providers_config;
use crate::routes;
use crate::server;
use crate::store;
use crate::waiters;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why the service did not start, or stopped without being asked to. `main` logs its `Display`
/// as the `fatal` line's `error` and exits 1.
#[derive(Debug)]
pub enum Fatal {
    /// A setting is wrong.
    Config(ConfigError),
    /// The public listener (the only one without an internal address) could not be bound.
    Listen {
        host: String,
        port: u16,
        error: std::io::Error,
    },
    /// The internal listener could not be bound.
    ListenInternal {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The shared store could not be set up, in its words.
    Store(String),
    /// A provider could not be set up (OpenID Connect discovery, say), in its words.
    Provider(String),
    /// The completion events' outbox could not be set up, in its words.
    Events(String),
    /// Kept connections could not be set up (their file, or their names key in Redis), in its
    /// words.
    Connections(String),
    /// The store's sweeper thread could not be started.
    Sweeper(std::io::Error),
    /// The server's runtime or threads could not be started.
    Server(std::io::Error),
    /// SIGTERM and SIGINT could not be listened for.
    Signals(std::io::Error),
    /// The server stopped without being asked to (accepting failed for too long).
    Stopped(server::Failure),
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fatal::Config(e) => e.fmt(f),
            Fatal::Listen { host, port, error } => {
                write!(f, "cannot listen on {host}:{port}: {error}")
            }
            Fatal::ListenInternal { addr, error } => {
                write!(
                    f,
                    "cannot listen on OAUTH_RELAY_INTERNAL_ADDR {addr}: {error}"
                )
            }
            Fatal::Store(words)
            | Fatal::Provider(words)
            | Fatal::Events(words)
            | Fatal::Connections(words) => f.write_str(words),
            Fatal::Sweeper(error) => error.fmt(f),
            Fatal::Server(error) => write!(f, "cannot start the server: {error}"),
            Fatal::Signals(error) => write!(f, "cannot install signal handlers: {error}"),
            Fatal::Stopped(failure) => failure.fmt(f),
        }
    }
}

impl std::error::Error for Fatal {}

impl From<ConfigError> for Fatal {
    fn from(e: ConfigError) -> Fatal {
        Fatal::Config(e)
    }
}

/// Logs the worst-case memory of this configuration, and warns when the container's memory
/// limit is below it: reaching every cap at once would get the pod OOM-killed, losing everything
/// held in memory.
fn check_memory_budget(config: &config::Config) {
    let budget = budget::worst_case(config);
    let mib = |b: u64| (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0;
    let items: serde_json::Map<String, serde_json::Value> = budget
        .items
        .iter()
        .map(|(name, bytes)| (name.to_string(), json!(mib(*bytes))))
        .collect();
    match budget::container_limit() {
        Some(limit) if limit < budget.total() => logging::warn(
            "memory_budget_over_limit",
            json!({ "worst_case_mib": mib(budget.total()), "limit_mib": mib(limit), "items_mib": items,
                    "action": "lower OAUTH_RELAY_MAX_CONNECTIONS, OAUTH_RELAY_MAX_PENDING(_BYTES), OAUTH_RELAY_MAX_WAITERS, OAUTH_RELAY_MAX_SESSIONS or OAUTH_RELAY_WEBHOOK_MAX_QUEUE, or raise the limit" }),
        ),
        limit => logging::info(
            "memory_budget",
            json!({ "worst_case_mib": mib(budget.total()), "limit_mib": limit.map(mib), "items_mib": items }),
        ),
    }
}

/// The outbox of completion events (in Redis when the state is, so events outlive a replica)
/// and its delivery threads.
fn start_events(
    webhook: events::config::WebhookConfig,
    redis: Option<(&kv::Kv, &config::RedisConfig)>,
) -> Arc<events::Events> {
    let outbox: Arc<dyn events::outbox::Outbox> = match redis {
        None => Arc::new(events::memory_outbox::MemoryOutbox::new(webhook.max_queue)),
        Some((kv, r)) => Arc::new(events::redis_outbox::RedisOutbox::new(
            kv.clone(),
            &r.kv.prefix,
            r.keys.clone(),
            webhook.max_queue,
            webhook.lease(),
        )),
    };
    Arc::new(events::Events::start(webhook, outbox))
}

/// Warns at start-up when Redis is out of reach, or would lose what it is given in a restart
/// (one check for the store, the outbox and kept connections: `connections::durability`).
fn check_redis(store: &store::redis::RedisStore, kv: &kv::Kv) {
    if let Err(e) = store::Store::ping(store) {
        logging::warn(
            "redis_unreachable",
            json!({ "error": e.0, "effect": "/ready answers 503 until Redis answers" }),
        );
        return;
    }
    if let Some(warning) = connections::durability::redis_persistence(kv).warning() {
        logging::warn("redis_persistence", json!({ "warning": warning }));
    }
}

/// Kept connections in Redis, on the store's connection. Checks the names key (a changed one
/// would silently lose every connection); persistence is checked once for all (`check_redis`).
fn redis_connections(
    redis: &Arc<store::redis::RedisStore>,
    max: usize,
) -> Result<Arc<dyn connections::ConnectionStore>, Fatal> {
    let store = connections::redis::RedisConnections::new(redis.clone(), max);
    match store.check_key_names() {
        Ok(()) => {}
        Err(e @ connections::redis::NamesCheck::AnotherKey) => {
            return Err(Fatal::Connections(e.to_string()))
        }
        Err(connections::redis::NamesCheck::Unchecked(e)) => logging::warn(
            "connections_names_unchecked",
            json!({ "error": e, "effect": "checked again at the next start-up" }),
        ),
    }
    Ok(Arc::new(store))
}

/// Kept connections on the store the configuration names, refreshed through the broker's
/// providers, with their keep-alive thread; `None` when they cannot be kept (then `keep` is
/// refused with the words naming the setting).
fn start_connections(
    c: &connections::config::ConnectionsConfig,
    broker: &broker::Broker,
    redis: Option<Arc<store::redis::RedisStore>>,
    events: &Option<Arc<events::Events>>,
) -> Result<Option<Arc<connections::Connections>>, Fatal> {
    let store: Arc<dyn connections::ConnectionStore> = match (&c.kept_in, redis) {
        (KeptIn::Redis, Some(redis)) => redis_connections(&redis, c.max)?,
        (KeptIn::Redis, None) => {
            return Err(Fatal::Connections(
                "connections in Redis without a Redis store".into(),
            ))
        }
        (KeptIn::File { path, keys, .. }, _) => Arc::new(
            connections::embedded::EmbeddedConnections::open(path, keys.clone(), c.max)
                .map_err(|e| {
                    Fatal::Connections(format!(
                        "{e}. OAUTH_RELAY_CONNECTIONS_FILE must name a file in a writable directory that outlives the process (a volume in a container); set it blank to refuse kept connections instead"
                    ))
                })?,
        ),
        (KeptIn::Nowhere(words), _) => {
            logging::info(
                "connections_off",
                json!({ "effect": "sessions with keep are refused (400)", "why": words }),
            );
            return Ok(None);
        }
    };
    let service = Arc::new(connections::Connections::new(
        store,
        provider::refreshers(broker.providers()),
        c.policy.clone(),
    ));
    service.observe(broker::connections::needs_reauth_observer(events.clone()));
    let (keep_alive, ticking) = (c.keep_alive, service.clone());
    std::thread::Builder::new()
        .name("connections-keep-alive".into())
        .spawn(move || loop {
            std::thread::sleep(keep_alive);
            let report = ticking
                .keep_alive_tick(KEEP_ALIVE_BATCH, std::time::Instant::now() + keep_alive);
            if report.started > 0 || report.skipped > 0 {
                logging::info(
                    "connections_keep_alive",
                    json!({ "due": report.due, "started": report.started, "skipped": report.skipped }),
                );
            }
        })
        .map_err(|e| Fatal::Connections(e.to_string()))?;
    Ok(Some(service))
}

/// Connections one keep-alive pass looks at, at most: the rest wait for the next pass.
const KEEP_ALIVE_BATCH: usize = 1_000;

/// Serves until SIGTERM or SIGINT (Ok) or until accepting connections is lost for good (Err).
pub fn serve(config: config::Config) -> Result<(), Fatal> {
    logging::init(config.log_level);
    logging::install_panic_hook();
    if config.unused_encryption_key {
        logging::warn(
            "encryption_key_unused",
            json!({ "setting": "OAUTH_RELAY_ENCRYPTION_KEY",
                    "effect": "it seals only what is stored in Redis, and kept connections in their file in broker mode; no Redis is configured and broker mode is off (or OAUTH_RELAY_CONNECTIONS_FILE is blank): pending callbacks, sessions and tokens are held in this process's memory, not encrypted" }),
        );
    }
    let public = server::bind(&config.host, config.port).map_err(|error| Fatal::Listen {
        host: config.host.clone(),
        port: config.port,
        error,
    })?;
    let listeners = match config.internal_addr {
        None => vec![(public, http::Listener::Sole)],
        Some(addr) => {
            let internal = server::bind(&addr.ip().to_string(), addr.port())
                .map_err(|error| Fatal::ListenInternal { addr, error })?;
            vec![
                (public, http::Listener::Public),
                (internal, http::Listener::Internal),
            ]
        }
    };
    let waiters = waiters::Waiters::new(config.max_waiters, config.max_waiters_per_client);
    // Kept connections, once built (after the providers): told of other replicas' news too.
    let kept: Arc<std::sync::OnceLock<Arc<connections::Connections>>> = Arc::default();
    let mut redis_store = None;
    // One Redis layer for the store and the outbox: one connection per server, shared.
    let kv = config
        .redis
        .as_ref()
        .map(|r| kv::Kv::open(&r.kv))
        .transpose()
        .map_err(Fatal::Store)?;
    let store: Arc<dyn store::Store> = match (&config.redis, &kv) {
        (Some(r), Some(kv)) => {
            let redis = Arc::new(
                store::redis::RedisStore::on(kv.clone(), r, config.ttl, config.max_pending)
                    .with_max_per_client(config.max_pending_per_client)
                    // Sessions stored before providers had names were all Microsoft 365's.
                    .with_unnamed_provider(providers_config::M365),
            );
            let (w, all, k) = (waiters.clone(), waiters.clone(), kept.clone());
            // After a failover (or any lost subscription) news may have been missed: every
            // local long-poll looks again.
            redis.start_background(
                move |key| {
                    w.notify(key);
                    if let Some(k) = k.get() {
                        k.notified(key);
                    }
                },
                move || all.notify_all(),
            );
            check_redis(&redis, kv);
            redis_store = Some(redis.clone());
            redis
        }
        _ => Arc::new(
            store::memory::MemoryStore::new(
                config.ttl,
                config.max_pending,
                config.max_pending_bytes,
            )
            .with_max_sessions(config.max_sessions)
            .with_max_per_client(config.max_pending_per_client),
        ),
    };
    {
        let store = store.clone();
        std::thread::Builder::new()
            .name("sweeper".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                store.sweep();
            })
            .map_err(Fatal::Sweeper)?;
    }
    let events = config
        .webhook
        .clone()
        .map(|w| start_events(w, kv.as_ref().zip(config.redis.as_ref())));
    let broker = match config.broker.clone() {
        None => None,
        Some(b) => {
            // OpenID Connect discovery happens here: a provider that cannot be set up stops
            // start-up rather than fail every sign-in later.
            let http: Arc<dyn outbound::Http> = Arc::new(outbound::Ureq);
            let providers = b
                .providers
                .iter()
                .map(|s| provider::build(s, http.clone(), b.exchange_timeout))
                .collect::<Result<Vec<_>, String>>()
                .map_err(Fatal::Provider)?;
            let broker = broker::Broker::new(b, providers);
            match &config.connections {
                None => Some(broker),
                Some(c) => match start_connections(c, &broker, redis_store, &events)? {
                    None => Some(broker),
                    Some(service) => {
                        let _ = kept.set(service.clone());
                        Some(broker.with_connections(broker::connections::Kept::new(
                            service,
                            config.server.blocking_threads / 2,
                            c.broker_token,
                        )))
                    }
                },
            }
        }
    };
    let broker_log = broker.as_ref().map(|b| {
        json!({
            "public_url": b.config.public_base_url,
            "providers": b.providers().iter().map(|p| p.describe()).collect::<Vec<_>>(),
            "handle_only_access": b.config.handle_only,
        })
    });
    let counters = Arc::new(server::Counters::default());
    let app = Arc::new(app::App {
        config: config.clone(),
        store,
        waiters: waiters.clone(),
        broker,
        events: events.clone(),
        server_counters: counters.clone(),
        pending_share_refused: Default::default(),
    });
    let router = Arc::new(routes::Router(app));
    let opts = config.server.clone();
    let running = server::start_listeners(listeners, opts, router, waiters, counters)
        .map_err(Fatal::Server)?;
    logging::info(
        "listening",
        json!({
            // The public listener (the only one when no internal address is set).
            "addr": running.addr().to_string(),
            "internal_addr": running.addr_of(http::Listener::Internal).map(|a| a.to_string()),
            "ttl_secs": config.ttl.as_secs(),
            "max_pending": config.max_pending,
            "max_pending_per_client": config.max_pending_per_client,
            "api_token": config.api_token.is_some(),
            "require_registered_state": config.require_registered_state,
            "store": if config.redis.is_some() { "redis" } else { "memory" },
            "redis": config.redis.as_ref().map(|r| json!({
                "topology": r.kv.kind(),
                "min_replicas_acked": r.durability.replicas,
                "replica_wait_ms": r.durability.wait.as_millis() as u64,
            })),
            "webhook": config.webhook.as_ref().map(|w| json!({
                "origin": w.origin(),
                "max_attempts": w.max_attempts,
                "max_age_secs": w.max_age.as_secs(),
                "max_queue": w.max_queue,
            })),
            "broker": broker_log,
            "connections": config.connections.as_ref().map(|c| match &c.kept_in {
                KeptIn::Redis => json!({ "kept_in": "redis", "max": c.max }),
                KeptIn::File { path, .. } => json!({ "kept_in": "file", "file": path.display().to_string(), "max": c.max }),
                KeptIn::Nowhere(_) => json!({ "kept_in": "nowhere" }),
            }),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );
    check_memory_budget(&config);
    let stopper = running.stopper();
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _entered = running.runtime().enter();
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        term.and_then(|t| int.map(|i| (t, i)))
            .map_err(Fatal::Signals)?
    };
    running.runtime().spawn(async move {
        let (mut term, mut int) = signals;
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        logging::info("signal", json!({ "signal": name }));
        stopper.stop();
    });
    let result = running.wait().map_err(Fatal::Stopped);
    // Requests are over; events they produced may still be on their way.
    if let Some(events) = events {
        events.drain_before_exit(config.server.shutdown_grace);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_say_what_they_always_said() {
        let refused = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let in_use = refused().to_string();
        for (fatal, words) in [
            (
                Fatal::Listen {
                    host: "0.0.0.0".into(),
                    port: 8000,
                    error: refused(),
                },
                format!("cannot listen on 0.0.0.0:8000: {in_use}"),
            ),
            (
                Fatal::ListenInternal {
                    addr: "127.0.0.1:8001".parse().unwrap(),
                    error: refused(),
                },
                format!("cannot listen on OAUTH_RELAY_INTERNAL_ADDR 127.0.0.1:8001: {in_use}"),
            ),
            (
                Fatal::Server(refused()),
                format!("cannot start the server: {in_use}"),
            ),
            (
                Fatal::Stopped(server::Failure::AcceptGaveUp {
                    secs: 61,
                    error: "Too many open files".into(),
                }),
                "could not accept connections for 61 s: Too many open files".into(),
            ),
            (
                Fatal::Stopped(server::Failure::Panicked("the server thread")),
                "the server thread panicked".into(),
            ),
            (
                Fatal::Config(ConfigError::Zero("OAUTH_RELAY_TTL_SECS")),
                "OAUTH_RELAY_TTL_SECS (--ttl-secs) must be at least 1".into(),
            ),
        ] {
            assert_eq!(fatal.to_string(), words);
        }
    }
}
