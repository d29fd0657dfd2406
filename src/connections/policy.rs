//! The timings and bounds of the refresh protocol, every default in one place. The wiring will
//! turn the ones an operator may change into settings (`config.rs`).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Policy {
    /// A token is refreshed when this little of its life is left (at most half of its
    /// lifetime), so callers rarely wait for a refresh. Defaults to 5 minutes.
    pub refresh_ahead: Duration,
    /// The budget given to one presentation of a refresh token. Defaults to 30 seconds.
    pub refresh_timeout: Duration,
    /// How often a replica renews the intents of the refreshes it is running. Defaults to 2
    /// seconds.
    pub heartbeat: Duration,
    /// An in-flight intent not renewed for this long belongs to a replica presumed dead (or
    /// paused): a one-time rotator's connection then needs re-authorization, another's refresh
    /// token is presented again after `settle`. Must be well above `heartbeat` and the store's
    /// hiccups, and above the replicas' clock skew for a store without a shared clock.
    /// Defaults to 20 seconds.
    pub stale_after: Duration,
    /// How long a presentation whose outcome is unknown is left before the same refresh token
    /// is presented again (only to a provider that keeps old refresh tokens valid), counted
    /// from the last sign of it. Defaults to 60 seconds.
    pub settle: Duration,
    /// The first back-off after a refused refresh, doubled with each refusal in a row.
    /// Defaults to 15 seconds.
    pub backoff_min: Duration,
    /// The longest back-off. Defaults to 1 hour.
    pub backoff_max: Duration,
    /// A grant refreshed this recently is not refreshed again on demand: its unexpired token is
    /// the answer, even to a caller asking for more life than the provider gives. Defaults to
    /// 30 seconds.
    pub min_refresh_interval: Duration,
    /// Refreshes one replica runs at once; past it, callers wait or are told to retry.
    /// Defaults to 32.
    pub max_refreshing: usize,
    /// How long a refresh's outcome is retried into an unreachable store before it is given
    /// up (then the intent is resolved as a dead replica's). Defaults to 5 minutes.
    pub record_patience: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            refresh_ahead: Duration::from_secs(300),
            refresh_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            stale_after: Duration::from_secs(20),
            settle: Duration::from_secs(60),
            backoff_min: Duration::from_secs(15),
            backoff_max: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(30),
            max_refreshing: 32,
            record_patience: Duration::from_secs(300),
        }
    }
}

impl Policy {
    /// The back-off after `failures` refusals in a row (1 or more).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.backoff_min
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let p = Policy::default();
        assert_eq!(p.backoff(1), Duration::from_secs(15));
        assert_eq!(p.backoff(2), Duration::from_secs(30));
        assert_eq!(p.backoff(4), Duration::from_secs(120));
        assert_eq!(p.backoff(9), Duration::from_secs(3600));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(3600));
    }
}
