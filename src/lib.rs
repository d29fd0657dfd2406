//! oauth-relay: receives OAuth redirects for programs that cannot, and hands each code out once.

pub mod app;
pub mod audit;
pub mod broker;
pub mod broker_config;
pub mod budget;
pub mod check;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod connections;
pub mod cors;
pub mod deployment;
pub mod error;
pub mod events;
pub mod grant;
pub mod http;
pub mod identity;
pub mod json_body;
pub mod keyring;
pub mod kv;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod pages;
pub mod provider;
pub mod providers_config;
pub mod relay;
pub mod routes;
pub mod seal;
pub mod secret;
pub mod server;
pub mod store;
pub mod urls;
pub mod waiters;

use connections::config::KeptIn;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

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
    redis: Option<&config::RedisConfig>,
) -> Result<Arc<events::Events>, String> {
    let outbox: Arc<dyn events::outbox::Outbox> = match redis {
        None => Arc::new(events::memory_outbox::MemoryOutbox::new(webhook.max_queue)),
        Some(r) => Arc::new(events::redis_outbox::RedisOutbox::new(
            r,
            webhook.max_queue,
            webhook.lease(),
            webhook.max_age,
        )?),
    };
    Ok(Arc::new(events::Events::start(webhook, outbox)))
}

/// REDIS MIGRATION (branch `redis`): the one place connections are put in Redis. Today they
/// share the relay store's pool (`RedisStore`); once the store runs on `src/kv`, build
/// `RedisConnections` on it here and nowhere else. Checks the names key (a changed one would
/// silently lose every connection) and warns when Redis would not keep what it is given.
fn redis_connections(
    redis: &Arc<store::redis::RedisStore>,
    max: usize,
) -> Result<Arc<dyn connections::ConnectionStore>, String> {
    let store = connections::redis::RedisConnections::new(redis.clone(), max);
    if let Err(e) = store.check_key_names() {
        if e.contains("another names key") {
            return Err(e);
        }
        logging::warn(
            "connections_names_unchecked",
            json!({ "error": e, "effect": "checked again at the next start-up" }),
        );
    }
    if let Some(warning) = connections::durability::redis_persistence(redis).warning() {
        logging::warn(
            "connections_persistence",
            json!({ "warning": warning, "setting": "appendonly yes, appendfsync always (redis.conf)" }),
        );
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
) -> Result<Option<Arc<connections::Connections>>, String> {
    let store: Arc<dyn connections::ConnectionStore> = match (&c.kept_in, redis) {
        (KeptIn::Redis, Some(redis)) => redis_connections(&redis, c.max)?,
        (KeptIn::Redis, None) => return Err("connections in Redis without a Redis store".into()),
        (KeptIn::File { path, keys, .. }, _) => Arc::new(
            connections::embedded::EmbeddedConnections::open(path, keys.clone(), c.max)
                .map_err(|e| {
                    format!(
                        "{e}. OAUTH_RELAY_CONNECTIONS_FILE must name a file in a writable directory that outlives the process (a volume in a container); set it blank to refuse kept connections instead"
                    )
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
            let report = ticking.keep_alive_tick(KEEP_ALIVE_BATCH, std::time::Instant::now() + keep_alive);
            if report.started > 0 || report.skipped > 0 {
                logging::info(
                    "connections_keep_alive",
                    json!({ "due": report.due, "started": report.started, "skipped": report.skipped }),
                );
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(Some(service))
}

/// Connections one keep-alive pass looks at, at most: the rest wait for the next pass.
const KEEP_ALIVE_BATCH: usize = 1_000;

/// Serves until SIGTERM or SIGINT (Ok) or until accepting connections is lost for good (Err).
pub fn serve(config: config::Config) -> Result<(), String> {
    logging::init(config.log_level);
    logging::install_panic_hook();
    if config.unused_encryption_key {
        logging::warn(
            "encryption_key_unused",
            json!({ "setting": "OAUTH_RELAY_ENCRYPTION_KEY",
                    "effect": "it seals only what is stored in Redis, and kept connections in their file in broker mode; OAUTH_RELAY_REDIS_URL is not set and broker mode is off (or OAUTH_RELAY_CONNECTIONS_FILE is blank): pending callbacks, sessions and tokens are held in this process's memory, not encrypted" }),
        );
    }
    let public = server::bind(&config.host, config.port)
        .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let listeners = match config.internal_addr {
        None => vec![(public, http::Listener::Sole)],
        Some(addr) => {
            let internal = server::bind(&addr.ip().to_string(), addr.port())
                .map_err(|e| format!("cannot listen on OAUTH_RELAY_INTERNAL_ADDR {addr}: {e}"))?;
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
    let store: Arc<dyn store::Store> = match &config.redis {
        None => Arc::new(
            store::memory::MemoryStore::new(
                config.ttl,
                config.max_pending,
                config.max_pending_bytes,
            )
            .with_max_sessions(config.max_sessions)
            .with_max_per_client(config.max_pending_per_client),
        ),
        Some(r) => {
            let redis = Arc::new(
                store::redis::RedisStore::new(r, config.ttl, config.max_pending)?
                    .with_max_per_client(config.max_pending_per_client)
                    // Sessions stored before providers had names were all Microsoft 365's.
                    .with_unnamed_provider(providers_config::M365),
            );
            let (w, k) = (waiters.clone(), kept.clone());
            redis.start_background(move |key| {
                w.notify(key);
                if let Some(k) = k.get() {
                    k.notified(key);
                }
            });
            redis_store = Some(redis.clone());
            if let Err(e) = store::Store::ping(redis.as_ref()) {
                logging::warn(
                    "redis_unreachable",
                    json!({ "error": e.0, "effect": "/ready answers 503 until Redis answers" }),
                );
            }
            redis
        }
    };
    {
        let store = store.clone();
        std::thread::Builder::new()
            .name("sweeper".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                store.sweep();
            })
            .map_err(|e| e.to_string())?;
    }
    let events = config
        .webhook
        .clone()
        .map(|w| start_events(w, config.redis.as_ref()))
        .transpose()?;
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
                .collect::<Result<Vec<_>, String>>()?;
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
    let app = Arc::new(app::App {
        config: config.clone(),
        store,
        waiters: waiters.clone(),
        broker,
        events: events.clone(),
    });
    let handler: server::Handler = Arc::new(move |req| routes::route(&app, req));
    let running = server::start_listeners(listeners, config.server.clone(), handler, waiters)
        .map_err(|e| format!("cannot start the server: {e}"))?;
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
            .map_err(|e| format!("cannot install signal handlers: {e}"))?
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
    let result = running.wait();
    // Requests are over; events they produced may still be on their way.
    if let Some(events) = events {
        events.drain_before_exit(config.server.shutdown_grace);
    }
    result
}
