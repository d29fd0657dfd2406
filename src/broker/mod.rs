//! The login broker: a trusted caller creates a session for an expected account, the person
//! opens the link, the identity provider signs them in, we redeem the code with PKCE, check the
//! account, and hand the tokens to the caller once. Every failure fails closed with a reason
//! code, an audit line and a page the person understands.
//!
//! `sessions.rs` serves the caller (create, status, tokens), `login.rs` the person (the link and
//! the provider's callback), `binding.rs` the cookie that ties a callback to the browser that
//! opened the link, `pages.rs` what the person reads, `connections.rs` the caller's kept
//! connections (the grants of sign-ins that asked to be kept). Providers are reached only through
//! the `Provider` trait.

pub mod binding;
pub mod connections;
pub mod login;
pub mod pages;
pub mod return_url;
pub mod sessions;

use crate::broker_config::BrokerConfig;
use crate::error::Error;
use crate::http::HttpRequest;
use crate::provider::Provider;
use crate::secret::Secret;
use base64::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub struct Broker {
    pub config: BrokerConfig,
    /// Every configured provider, in configuration order (few: a linear search is the map).
    providers: Vec<Arc<dyn Provider>>,
    /// Code exchanges running now (each on its own thread), bounded by `max_exchanges`.
    exchanges: Arc<AtomicUsize>,
    /// Kept connections, when there is a durable store for them.
    kept: Option<connections::Kept>,
}

impl Broker {
    pub fn new(config: BrokerConfig, providers: Vec<Arc<dyn Provider>>) -> Self {
        Broker {
            config,
            providers,
            exchanges: Arc::new(AtomicUsize::new(0)),
            kept: None,
        }
    }

    /// Serves kept connections through `kept`.
    pub fn with_connections(mut self, kept: connections::Kept) -> Self {
        self.kept = Some(kept);
        self
    }

    /// The provider of this name.
    pub fn provider(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.iter().find(|p| p.name() == name)
    }

    pub fn providers(&self) -> &[Arc<dyn Provider>] {
        &self.providers
    }

    /// Callers authenticate with the broker token, except on /status and /token when the
    /// operator allows handle-only access.
    fn authorize(&self, req: &HttpRequest, handle_only_ok: bool) -> Result<(), Error> {
        if handle_only_ok && self.config.handle_only {
            return Ok(());
        }
        match req.bearer_token() {
            Some(t) if self.config.broker_token.matches(t) => Ok(()),
            _ => Err(Error::BrokerUnauthorized),
        }
    }
}

fn pkce_challenge(verifier: &Secret) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.expose().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A place among the concurrently running exchanges, given back on drop.
struct ExchangeSlot(Arc<AtomicUsize>);

impl ExchangeSlot {
    fn acquire(counter: &Arc<AtomicUsize>, max: usize) -> Option<ExchangeSlot> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ExchangeSlot(counter.clone()))
    }
}

impl Drop for ExchangeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_example() {
        let v = Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            pkce_challenge(&v),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let counter = Arc::new(AtomicUsize::new(0));
        let a = ExchangeSlot::acquire(&counter, 2).unwrap();
        let _b = ExchangeSlot::acquire(&counter, 2).unwrap();
        assert!(ExchangeSlot::acquire(&counter, 2).is_none());
        drop(a);
        assert!(ExchangeSlot::acquire(&counter, 2).is_some());
    }
}
