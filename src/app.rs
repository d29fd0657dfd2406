//! What every handler shares: the validated configuration, the store, the long-poll registry,
//! the broker and the completion events, and the counters `/metrics` reads.

use crate::config::Config;
use crate::error::Error;
use crate::http::{HttpRequest, Reply, Response, Wait};
use crate::store::Store;
use crate::waiters::Waiters;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub waiters: Arc<Waiters>,
    /// Present in broker mode.
    pub broker: Option<crate::broker::Broker>,
    /// Completion events, when an endpoint is configured.
    pub events: Option<Arc<crate::events::Events>>,
    /// What the server counts (requests, connections, its shares), handed to it at start-up.
    pub server_counters: Arc<crate::server::Counters>,
    /// Callbacks and self-registrations refused (429) past their client's share of pending
    /// entries (`OAUTH_RELAY_MAX_PENDING_PER_CLIENT`).
    pub pending_share_refused: AtomicU64,
}

impl App {
    /// Wakes long-polls waiting for `id` of `kind`, here and (through the store) on every replica.
    pub fn notify(&self, kind: &str, id: &str) {
        let key = self.store.waiter_key(kind, id);
        self.waiters.notify(&key);
        self.store.publish(&key);
    }

    /// Wakes long-polls waiting for `id` of `kind` on this replica only: for news the store
    /// told the other replicas of itself (`Store::put_callback_async`).
    pub fn notify_here(&self, kind: &str, id: &str) {
        self.waiters.notify(&self.store.waiter_key(kind, id));
    }

    /// The broker, in broker mode; otherwise its routes are paths nobody serves (404).
    pub fn broker(&self) -> Result<&crate::broker::Broker, Error> {
        self.broker.as_ref().ok_or(Error::NotFound)
    }

    /// `?wait=SECONDS`, capped at `OAUTH_RELAY_MAX_WAIT_SECS`; zero when absent. Any whole
    /// number is capped, however many digits it has (a client may ask for "as long as you
    /// allow").
    pub fn wait_param(&self, req: &HttpRequest) -> Result<Duration, Error> {
        Ok(match req.query_param("wait") {
            None => Duration::ZERO,
            Some(w) => {
                let digits = w.strip_prefix('+').unwrap_or(&w);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::BadRequest("wait must be a whole number of seconds"));
                }
                Duration::from_secs(digits.parse::<u64>().unwrap_or(u64::MAX))
                    .min(self.config.max_wait)
            }
        })
    }

    /// Requires `Authorization: Bearer <OAUTH_RELAY_API_TOKEN>` when a token is configured.
    pub fn authorize(&self, req: &HttpRequest) -> Result<(), Error> {
        match &self.config.api_token {
            None => Ok(()),
            Some(expected) => match req.bearer_token() {
                Some(given) if expected.matches(given) => Ok(()),
                _ => Err(Error::Unauthorized),
            },
        }
    }
}

#[cfg(test)]
impl App {
    /// A relay in memory, without broker or events, as `serve` builds it from `config`: for
    /// handlers' unit tests.
    pub(crate) fn in_memory(config: Config) -> Arc<App> {
        let store = crate::store::memory::MemoryStore::new(
            config.ttl,
            config.max_pending,
            config.max_pending_bytes,
        );
        Arc::new(App {
            store: Arc::new(store),
            waiters: Waiters::new(config.max_waiters, config.max_waiters_per_client),
            broker: None,
            events: None,
            server_counters: Default::default(),
            pending_share_refused: Default::default(),
            config,
        })
    }
}

/// A long-poll: park the request under `key` for `wait`; `ready` tells whether a value this
/// request may have has landed (checked once parked and on every wake-up), `answer` builds the
/// reply when it has or at the deadline. Both are blocking calls on a store that blocks (run on
/// the pool).
pub fn long_poll(
    app: &Arc<App>,
    key: String,
    wait: Duration,
    ready: impl Fn(&App) -> bool + Send + Sync + 'static,
    answer: impl FnOnce(&App) -> Response + Send + 'static,
) -> Reply {
    let (ready_app, answer_app) = (app.clone(), app.clone());
    Reply::Wait(Wait {
        key,
        deadline: Instant::now() + wait,
        blocking: app.store.blocks(),
        ready: Arc::new(move || Box::pin(std::future::ready(ready(&ready_app)))),
        answer: Box::new(move || Reply::Now(answer(&answer_app))),
    })
}

/// `long_poll` whose `ready` and `answer` await the store instead of blocking: called in place,
/// their work awaited on the event loop (`Reply::awaiting`).
pub fn long_poll_async<R, A>(
    app: &Arc<App>,
    key: String,
    wait: Duration,
    ready: impl Fn(&Arc<App>) -> R + Send + Sync + 'static,
    answer: impl FnOnce(&Arc<App>) -> A + Send + 'static,
) -> Reply
where
    R: Future<Output = bool> + Send + 'static,
    A: Future<Output = Response> + Send + 'static,
{
    let (ready_app, answer_app) = (app.clone(), app.clone());
    Reply::Wait(Wait {
        key,
        deadline: Instant::now() + wait,
        blocking: false,
        ready: Arc::new(move || Box::pin(ready(&ready_app))),
        answer: Box::new(move || {
            let answer = answer(&answer_app);
            Reply::awaiting(async move { Reply::Now(answer.await) })
        }),
    })
}
