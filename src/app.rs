//! What every handler shares: the validated configuration, the store and the long-poll registry.

use crate::config::Config;
use crate::error::Error;
use crate::http::HttpRequest;
use crate::store::Store;
use crate::waiters::Waiters;
use std::sync::Arc;

pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub waiters: Arc<Waiters>,
    /// Present in broker mode.
    pub broker: Option<crate::broker::Broker>,
}

impl App {
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
