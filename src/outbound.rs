//! Outbound HTTP: one way to build a ureq agent, with the TLS provider pinned to ring, every
//! timeout set, no redirects followed, and error statuses readable.

use std::sync::Once;
use std::time::Duration;

static PROVIDER: Once = Once::new();

/// Makes ring the process's TLS crypto provider (for ureq and for Redis over TLS).
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        // Fails only if a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    install_crypto_provider();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::WebPki)
                .build(),
        )
        .build()
        .into()
}
