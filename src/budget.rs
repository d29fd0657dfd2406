//! The memory budget: what each thing a client can make the process hold costs (measured with
//! `bench/front.sh memory`, see docs/front-door.md), and the most a configuration can need when
//! every cap is reached at once. `serve` logs it, and warns when the container's memory limit is
//! lower, naming the caps to lower; a test checks the Kubernetes manifests against their limits.

use crate::config::Config;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

// Each figure is rounded up from `bench/front.sh memory` (docs/front-door.md, "Memory budget"):
// per item, (RSS with N items - RSS before) / N, N in the thousands.

/// Resident memory of an idle relay, runtime threads included (measured 5.3 MiB, the static
/// binary 3.9 MiB).
pub const BASE: u64 = 6 * MIB;
/// One open connection between requests: hyper's buffers, the task, our bookkeeping (measured
/// 12.2 kB before its first request, 13.3 kB after one, since the shares' bookkeeping).
pub const CONNECTION: u64 = 14 * KIB;
/// A parked long-poll on top of its connection (measured: a connection with a parked
/// long-poll, 12.6 kB, costs no more than an idle keep-alive one).
pub const WAITER: u64 = KIB;
/// A pending callback besides the bytes it holds: map entry, expiry, allocations' rounding
/// (measured 370 bytes with a short state and code).
pub const PENDING_ENTRY: u64 = 384;
/// A broker session holding its tokens until the caller takes them (measured 1.6 kB before
/// sign-in; Microsoft's access, refresh and id tokens add up to about 6 kB, and a return URL up
/// to 2 KiB). Sealed to the caller's key, the answer is held only as a JWE, base64url of the
/// whole answer (4/3 of it, about 8.6 kB with its header), and the session keeps the key (up to
/// 0.4 kB with a 256-character kid): 13 kB.
pub const SESSION: u64 = 14 * KIB;
/// A blocking-pool thread while it runs a code exchange or a Redis call: stack pages touched,
/// a TLS connection's buffers.
pub const BLOCKING_THREAD: u64 = 64 * KIB;
/// An undelivered completion event in the in-memory outbox: its id, JSON body and indexes
/// (measured about 570 bytes: 924 with its callback, `bench/events.py`).
pub const WEBHOOK_EVENT: u64 = 768;
/// A refresh of a kept connection in progress: its worker thread and the thread presenting the
/// refresh token (stack pages touched, a TLS connection's buffers), as a blocking thread each.
/// At most `Policy::max_refreshing` (32) at once.
pub const REFRESH: u64 = 2 * BLOCKING_THREAD;
/// Allocator rounding and fragmentation on what strangers size (headers, bodies, states).
const SLACK_PERCENT: u64 = 25;

/// The worst case of one configuration, item by item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub items: Vec<(&'static str, u64)>,
}

impl Budget {
    pub fn total(&self) -> u64 {
        self.items.iter().map(|(_, bytes)| bytes).sum()
    }
}

fn with_slack(bytes: u64) -> u64 {
    bytes + bytes * SLACK_PERCENT / 100
}

/// Every cap reached at once: each connection holding a full head and body, every long-poll
/// parked, the store full (in memory), every blocking thread busy. Per-client and per-listener
/// shares divide these caps among clients and listeners; they add nothing to what can be held.
pub fn worst_case(c: &Config) -> Budget {
    let s = &c.server;
    let per_connection = CONNECTION + with_slack((s.max_header_bytes + s.max_body_bytes) as u64);
    let mut items = vec![
        ("base", BASE),
        ("connections", s.max_connections as u64 * per_connection),
        ("long-polls", c.max_waiters as u64 * WAITER),
        (
            "blocking threads",
            s.blocking_threads as u64 * BLOCKING_THREAD,
        ),
    ];
    if c.log_level != crate::logging::Level::Off {
        // Lines waiting for stderr, and the batch being written (logging.rs).
        items.push(("log buffer", 2 * crate::logging::MAX_BUFFERED_BYTES as u64));
    }
    if let (Some(_), Some(kept)) = (&c.broker, &c.connections) {
        use crate::connections::config::KeptIn;
        if !matches!(kept.kept_in, KeptIn::Nowhere(_)) {
            items.push((
                "connection refreshes",
                kept.policy.max_refreshing as u64 * REFRESH,
            ));
        }
        // Connections are not held in memory: the file's pages redb caches, at most this
        // (measured: `bench/connections.sh`, docs/connections.md).
        if let KeptIn::File { .. } = kept.kept_in {
            items.push((
                "connections file cache",
                crate::connections::embedded::CACHE_BYTES as u64,
            ));
        }
    }
    if c.redis.is_none() {
        items.push((
            "pending callbacks",
            c.max_pending as u64 * PENDING_ENTRY + with_slack(c.max_pending_bytes as u64),
        ));
        if c.broker.is_some() {
            items.push(("broker sessions", c.max_sessions as u64 * SESSION));
        }
        if let Some(w) = &c.webhook {
            items.push(("webhook outbox", w.max_queue as u64 * WEBHOOK_EVENT));
        }
    }
    Budget { items }
}

/// The container's memory limit (cgroup v2, then v1), when there is one.
pub fn container_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| text.trim().parse::<u64>().ok())
    // v2 says "max" (not a number) and v1 about 2^63 when there is no limit.
    .filter(|limit| *limit < 1 << 62)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn the_defaults_fit_a_128_mib_pod() {
        let budget = worst_case(&Config::default());
        assert!(
            budget.total() <= 128 * MIB,
            "{budget:?} totals {} MiB",
            budget.total() / MIB
        );
    }

    #[test]
    fn kept_connections_count_the_files_cache_and_the_refreshes_in_flight() {
        use clap::Parser;
        let key = format!("k1:{}", base64::prelude::BASE64_STANDARD.encode([7u8; 32]));
        let budget = |extra: &[&str]| {
            let mut argv = vec![
                "oauth-relay",
                "--public-url",
                "https://relay.example",
                "--broker-token",
                "0123456789abcdef0123",
                "--m365-client-id",
                "client",
            ];
            argv.extend_from_slice(extra);
            let cli = crate::config::Cli::try_parse_from(argv).unwrap();
            worst_case(&Config::from_args(cli.serve, &Default::default()).unwrap())
        };
        let item = |b: &Budget, name: &str| b.items.iter().find(|(n, _)| *n == name).map(|i| i.1);
        let file = budget(&["--encryption-key", &key]);
        assert_eq!(
            item(&file, "connections file cache"),
            Some(crate::connections::embedded::CACHE_BYTES as u64)
        );
        assert_eq!(item(&file, "connection refreshes"), Some(32 * REFRESH));
        // No store for them: nothing kept, nothing refreshed.
        let none = budget(&[]);
        assert_eq!(item(&none, "connections file cache"), None);
        assert_eq!(item(&none, "connection refreshes"), None);
        assert_eq!(file.total() - none.total(), 16 * MIB + 32 * REFRESH);
    }

    #[test]
    fn a_shared_store_holds_nothing_here() {
        let memory = worst_case(&Config::default());
        use clap::Parser;
        let key = format!("k1:{}", base64::prelude::BASE64_STANDARD.encode([7u8; 32]));
        let cli = crate::config::Cli::try_parse_from([
            "oauth-relay",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--encryption-key",
            &key,
        ])
        .unwrap();
        let shared = worst_case(&Config::from_args(cli.serve, &Default::default()).unwrap());
        assert!(shared.total() < memory.total());
        assert!(!shared
            .items
            .iter()
            .any(|(name, _)| *name == "pending callbacks"));
    }
}
