//! Settings of completion events: where they go, the signing secret, and the bounds of their
//! delivery (timeout, attempts, age, queue size). Events are off unless a URL is set.

use super::signing::WebhookSecret;
use clap::Args;
use std::sync::Arc;
use std::time::Duration;

pub mod defaults {
    pub const TIMEOUT_MS: u64 = 5_000;
    pub const MAX_ATTEMPTS: u32 = 10;
    pub const MAX_AGE_SECS: u64 = 3_600;
    pub const RETRY_BASE_MS: u64 = 1_000;
    pub const MAX_QUEUE: usize = 10_000;
    pub const WORKERS: usize = 2;
}

#[derive(Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Endpoint that receives signed completion events (https://; http:// only on loopback).
    /// Unset: no events.
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Signing secret, Standard Webhooks style: whsec_ followed by base64 of at least 16 bytes.
    /// Prefer OAUTH_RELAY_WEBHOOK_SECRET_FILE or the variable: command lines are visible.
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// File holding the signing secret (a mounted Kubernetes Secret), instead of the variable.
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<std::path::PathBuf>,
    /// Milliseconds one delivery attempt may take (connect, send, answer) before it counts as
    /// failed and is retried.
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_TIMEOUT_MS", default_value_t = defaults::TIMEOUT_MS)]
    pub webhook_timeout_ms: u64,
    /// Attempts per event before it is given up (logged as webhook_gave_up).
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS)]
    pub webhook_max_attempts: u32,
    /// Seconds after which an undelivered event is given up, whatever its attempts.
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_MAX_AGE_SECS", default_value_t = defaults::MAX_AGE_SECS)]
    pub webhook_max_age_secs: u64,
    /// First retry delay in milliseconds; it doubles per attempt (with jitter), up to 5 minutes.
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_RETRY_BASE_MS", default_value_t = defaults::RETRY_BASE_MS)]
    pub webhook_retry_base_ms: u64,
    /// Most undelivered events held (per replica in memory, shared in Redis); past it events of
    /// unregistered relay states (anyone can cause them) are dropped first, then the oldest
    /// (logged as webhook_dropped, counted by class in /metrics).
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_MAX_QUEUE", default_value_t = defaults::MAX_QUEUE)]
    pub webhook_max_queue: usize,
    /// Delivery threads (each sends one event at a time).
    #[arg(long, env = "OAUTH_RELAY_WEBHOOK_WORKERS", default_value_t = defaults::WORKERS)]
    pub webhook_workers: usize,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Arc<WebhookSecret>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub retry_base: Duration,
    pub max_queue: usize,
    pub workers: usize,
}

impl WebhookConfig {
    /// `None` when no URL is set; an error naming the variable for anything wrong.
    pub fn from_args(mut a: WebhookArgs) -> Result<Option<WebhookConfig>, String> {
        // Blank counts as unset, as for the broker's settings (a manifest's `value: ""`).
        a.webhook_secret = a.webhook_secret.filter(|s| !s.trim().is_empty());
        a.webhook_secret_file = a.webhook_secret_file.filter(|p| !p.as_os_str().is_empty());
        let Some(url) = a
            .webhook_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            if a.webhook_secret.is_some() || a.webhook_secret_file.is_some() {
                return Err("OAUTH_RELAY_WEBHOOK_SECRET is set but OAUTH_RELAY_WEBHOOK_URL is not: set both, or neither".into());
            }
            return Ok(None);
        };
        const URL: &str = "OAUTH_RELAY_WEBHOOK_URL";
        // Same rule as the broker's upstream URLs: the events cross the network signed but
        // not encrypted otherwise.
        // Its words, not the URL itself: the path of a webhook URL may hold a secret.
        crate::urls::checked_url(url, URL).map_err(|e| match e.rsplit_once(": \"") {
            Some((words, _)) => {
                format!("{words} (the value is not repeated: its path may hold a secret)")
            }
            None => e,
        })?;
        let secret = match (&a.webhook_secret, &a.webhook_secret_file) {
            (Some(_), Some(_)) => {
                return Err("set OAUTH_RELAY_WEBHOOK_SECRET or OAUTH_RELAY_WEBHOOK_SECRET_FILE, not both".into())
            }
            (Some(s), None) => WebhookSecret::parse(s, "OAUTH_RELAY_WEBHOOK_SECRET")?,
            (None, Some(path)) => WebhookSecret::parse(
                &std::fs::read_to_string(path).map_err(|e| {
                    format!("OAUTH_RELAY_WEBHOOK_SECRET_FILE {}: {e}", path.display())
                })?,
                "OAUTH_RELAY_WEBHOOK_SECRET_FILE",
            )?,
            (None, None) => {
                return Err(format!(
                    "{URL} needs OAUTH_RELAY_WEBHOOK_SECRET or OAUTH_RELAY_WEBHOOK_SECRET_FILE: events are always signed"
                ))
            }
        };
        let at_least_one = |name: &str, v: u64| {
            if v == 0 {
                Err(format!("{name} must be at least 1"))
            } else {
                Ok(v)
            }
        };
        Ok(Some(WebhookConfig {
            url: url.to_string(),
            secret: Arc::new(secret),
            timeout: Duration::from_millis(at_least_one(
                "OAUTH_RELAY_WEBHOOK_TIMEOUT_MS",
                a.webhook_timeout_ms,
            )?),
            max_attempts: at_least_one(
                "OAUTH_RELAY_WEBHOOK_MAX_ATTEMPTS",
                a.webhook_max_attempts.into(),
            )? as u32,
            max_age: Duration::from_secs(at_least_one(
                "OAUTH_RELAY_WEBHOOK_MAX_AGE_SECS",
                a.webhook_max_age_secs,
            )?),
            retry_base: Duration::from_millis(at_least_one(
                "OAUTH_RELAY_WEBHOOK_RETRY_BASE_MS",
                a.webhook_retry_base_ms,
            )?),
            max_queue: at_least_one("OAUTH_RELAY_WEBHOOK_MAX_QUEUE", a.webhook_max_queue as u64)?
                as usize,
            workers: at_least_one("OAUTH_RELAY_WEBHOOK_WORKERS", a.webhook_workers as u64)?
                as usize,
        }))
    }

    /// Scheme, host and port of the URL, for logs: its path or user part may hold a token (many
    /// receivers authenticate by a secret URL).
    pub fn origin(&self) -> String {
        let uri: http::Uri = self.url.parse().expect("checked at start-up");
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}://{host}{port}", uri.scheme_str().unwrap_or_default())
    }

    /// How long a replica on Redis holds a claimed event before another may take it over: an
    /// attempt ends within `timeout`, so a live replica always acknowledges or reschedules first.
    pub fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhook: WebhookArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<WebhookConfig>, String> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        WebhookConfig::from_args(Cli::try_parse_from(argv).unwrap().webhook)
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn urls_are_https_except_on_loopback_and_logged_without_their_path() {
        let c = parse(&[
            "--webhook-url",
            "https://u:p@hooks.example/t0ken",
            "--webhook-secret",
            SECRET,
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.origin(), "https://hooks.example");
        assert!(parse(&[
            "--webhook-url",
            "http://127.0.0.1:9/x",
            "--webhook-secret",
            SECRET
        ])
        .is_ok());
        let err = parse(&[
            "--webhook-url",
            "http://hooks.example/x",
            "--webhook-secret",
            SECRET,
        ])
        .unwrap_err();
        assert!(err.contains("OAUTH_RELAY_WEBHOOK_URL"), "{err}");
        assert!(parse(&[]).unwrap().is_none());
        assert!(
            parse(&["--webhook-secret", SECRET]).is_err(),
            "a secret without a URL"
        );
        assert!(parse(&[
            "--webhook-url",
            "https://h.example",
            "--webhook-secret",
            SECRET,
            "--webhook-max-queue",
            "0"
        ])
        .is_err());
    }
}
