//! What every handler shares: the validated configuration, the store and the long-poll registry.

use crate::config::Config;
use crate::error::Error;
use crate::http::{HttpRequest, Reply, Response, Wait};
use crate::store::Store;
use crate::waiters::Waiters;
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
}

impl App {
    /// Wakes long-polls waiting for `id` of `kind`, here and (through the store) on every replica.
    pub fn notify(&self, kind: &str, id: &str) {
        let key = self.store.waiter_key(kind, id);
        self.waiters.notify(&key);
        self.store.publish(&key);
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

/// A long-poll: park the request under `key` for `wait`; `ready` tells whether a value this
/// request may have has landed (checked once parked and on every wake-up), `answer` builds the
/// reply when it has or at the deadline.
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
        ready: Arc::new(move || ready(&ready_app)),
        answer: Box::new(move || answer(&answer_app)),
    })
}
