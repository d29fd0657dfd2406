//! Fair shares of pending entries (issue 13): one client (an address; on loopback, 127.0.0.2 and
//! 127.0.0.3 are two) cannot fill OAUTH_RELAY_MAX_PENDING with junk callbacks or token-less
//! registrations and lock everyone else out. Past its share it gets 429 with Retry-After (a page
//! for /callback, JSON for the API), `/metrics` counts it, another client is still served, and
//! a retrieval frees a place. The share holds across two replicas on one real Redis.

use crate::support;

use serde_json::json;
use support::relay_api::{hash_of, metric, replica, As};
use support::{RedisServer, Relay};

const REFUSED: &str = "oauth_relay_quota_refused_total{share=\"pending\"}";

fn refused(relay: &Relay) -> u64 {
    metric(relay, REFUSED).unwrap_or_else(|| panic!("no {REFUSED} in /metrics"))
}

/// The share is 3; `at` and `other` may be two replicas.
fn fill_and_be_refused(at: &Relay, other: &Relay) {
    let attacker = As::anyone().from("127.0.0.2");
    let person = As::anyone().from("127.0.0.3");
    // Spread over both replicas: the share is one, wherever the requests land.
    for (i, r) in [at, other, at].iter().enumerate() {
        let res = attacker.get(r, &format!("/callback?code=junk&state=junk-{i}"));
        assert_eq!(res.status, 200, "junk {i}");
    }
    for r in [at, other] {
        let page = attacker.get(r, "/callback?code=junk&state=junk-more");
        assert_eq!(page.status, 429);
        assert_eq!(page.media_type(), "text/html");
        assert_eq!(page.header("Retry-After"), Some("60"));
        assert!(
            page.text().contains("Too many pending sign-ins"),
            "{}",
            page.text()
        );
        // A self-registration counts against the same share: JSON, for a program.
        let res = attacker.register(
            r,
            json!({ "state": "junk-reg", "retrieval_hash": hash_of("x") }),
        );
        assert_eq!(res.status, 429);
        assert_eq!(res.header("Retry-After"), Some("60"));
        assert_eq!(
            res.json(),
            json!({ "status": "error", "message":
                "Too many pending sign-ins from this address (OAUTH_RELAY_MAX_PENDING_PER_CLIENT); try again later" })
        );
    }
    // Nothing of the refused ones was stored.
    assert_eq!(As::anyone().get(at, "/api/callback/junk-more").status, 404);
    // Everyone else is served, on either replica.
    assert_eq!(
        person
            .get(other, "/callback?code=real&state=person-1")
            .status,
        200
    );
    let res = person.register(
        at,
        json!({ "state": "person-2", "retrieval_hash": hash_of("mine") }),
    );
    assert_eq!(res.status, 201);
    // A retrieval (by anyone) frees one of the attacker's places, and only one.
    assert_eq!(As::anyone().get(other, "/api/callback/junk-0").status, 200);
    assert_eq!(
        attacker.get(at, "/callback?code=junk&state=junk-3").status,
        200
    );
    assert_eq!(
        attacker
            .get(other, "/callback?code=junk&state=junk-4")
            .status,
        429
    );
}

#[test]
fn one_client_past_its_share_gets_429_and_another_is_still_served() {
    let relay = Relay::start(&["--max-pending-per-client", "3"]);
    assert_eq!(refused(&relay), 0);
    fill_and_be_refused(&relay, &relay);
    assert_eq!(refused(&relay), 5);
    // The counter is one family in the Prometheus text format.
    let text = relay.get("/metrics").text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("oauth_relay_quota_refused_total"))
        .collect();
    assert_eq!(
        lines,
        [
            "# HELP oauth_relay_quota_refused_total Times a client was held to its share of a cap others need: 429, or for connections its own longest-idle one closed instead.",
            "# TYPE oauth_relay_quota_refused_total counter",
            "oauth_relay_quota_refused_total{share=\"connections\"} 0",
            "oauth_relay_quota_refused_total{share=\"waiters\"} 0",
            "oauth_relay_quota_refused_total{share=\"pending\"} 5",
        ]
    );
}

#[test]
fn the_share_holds_across_two_replicas_on_one_redis() {
    let redis = RedisServer::start();
    let a = replica(&redis, &["--max-pending-per-client", "3"]);
    let b = replica(&redis, &["--max-pending-per-client", "3"]);
    fill_and_be_refused(&a, &b);
    // Each replica counts what it refused.
    assert_eq!(refused(&a) + refused(&b), 5);
}

/// The default: 1 % of the cap, at least 10. With a cap of 100, one client stops at 10 and the
/// other 90 places stay for everyone else.
#[test]
fn by_default_one_client_cannot_fill_the_cap() {
    let relay = Relay::start(&["--max-pending", "100"]);
    let attacker = As::anyone().from("127.0.0.2");
    let stored = (0..100)
        .filter(|i| {
            attacker
                .get(&relay, &format!("/callback?code=junk&state=j{i}"))
                .status
                == 200
        })
        .count();
    assert_eq!(stored, 10);
    for i in 0..20 {
        let person = As::anyone().from(&format!("127.0.1.{i}"));
        assert_eq!(
            person
                .get(&relay, &format!("/callback?code=c&state=p{i}"))
                .status,
            200
        );
    }
}
