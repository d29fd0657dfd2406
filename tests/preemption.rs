//! What an attacker on the same network as the relay found (issue 13), closed:
//! - a stranger who saw a registered, secret-guarded state sends their callback first: the
//!   person's then finds the state in conflict, and the owner gets neither code (its own 409,
//!   never a 200), the person a page saying so, the completion event `conflict`;
//! - a registration that expires leaves a tombstone for the TTL: nobody may register the state
//!   again and the person's late sign-in is refused, not handed to whoever registered next;
//!   the tombstone goes after its time.
//!
//! In memory and across replicas on one real Redis.

use crate::support;

use serde_json::json;
use support::openapi::{check_webhook, document};
use support::relay_api::{assert_same_answer, hash_of, replica, As};
use support::webhook_receiver::{test_secret, Receiver};
use support::{eventually, RedisServer, Relay};

const SECRET: &str = "the-owners-secret-0123456789abcdef";

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The owner registers on `a`; the stranger's callback lands on `b`, the person's on `c`; the
/// owner retrieves from each.
fn stranger_first(a: &Relay, b: &Relay, c: &Relay, state: &str) {
    let res = As::anyone().register(
        a,
        json!({ "state": state, "ttl_secs": 300, "retrieval_hash": hash_of(SECRET) }),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let theirs = b.get(&format!("/callback?code=THEIRS&state={state}"));
    assert_eq!(theirs.status, 200);
    let mine = c.get(&format!("/callback?code=MINE&state={state}"));
    assert_eq!(mine.status, 409);
    assert_eq!(mine.media_type(), "text/html");
    let page = mine.text();
    assert!(page.contains("two different responses"), "{page}");
    assert!(page.contains("start the sign-in again"), "{page}");
    assert!(!page.contains("MINE") && !page.contains("THEIRS"));
    // Reloads of either are told the same; nothing changes.
    for code in ["THEIRS", "MINE"] {
        assert_eq!(
            a.get(&format!("/callback?code={code}&state={state}"))
                .status,
            409
        );
    }
    let conflict = json!({ "status": "error", "message":
        "Two different callbacks arrived for this state, so neither is handed out: start a new sign-in" });
    for r in [a, b, c] {
        for wait in ["", "?wait=30"] {
            let res = As::holder(SECRET).get(r, &format!("/api/callback/{state}{wait}"));
            assert_eq!(res.status, 409, "{}", res.text());
            assert_eq!(res.json(), conflict);
        }
        // Anyone else learns nothing.
        let unknown = As::anyone().get(r, "/api/callback/nobody-knows");
        for stranger in [As::anyone(), As::holder("wrong")] {
            let res = stranger.get(r, &format!("/api/callback/{state}"));
            assert_same_answer(&res, &unknown, "a stranger after the conflict");
        }
    }
}

#[test]
fn a_strangers_callback_first_hands_out_neither_code_and_the_event_says_conflict() {
    let receiver = Receiver::start(&test_secret());
    let relay = Relay::start_env(
        &[],
        &[
            ("OAUTH_RELAY_WEBHOOK_URL", &receiver.url()),
            ("OAUTH_RELAY_WEBHOOK_SECRET", &test_secret()),
        ],
    );
    stranger_first(&relay, &relay, &relay, "pre");
    let handle = sha256_hex("pre");
    let events = eventually("two events for the state", || {
        let events: Vec<_> = receiver
            .accepted()
            .into_iter()
            .filter(|e| e.json()["data"]["handle"] == handle.as_str())
            .collect();
        (events.len() >= 2).then_some(events)
    });
    // Delivered at least once, by parallel workers: in any order.
    let mut data: Vec<_> = events.iter().map(|e| e.json()["data"].clone()).collect();
    data.sort_by_key(|d| d["status"] != "succeeded");
    data.dedup();
    assert_eq!(
        data,
        [
            json!({ "handle": handle, "status": "succeeded", "reason": null }),
            json!({ "handle": handle, "status": "conflict", "reason": "conflict" }),
        ]
    );
    let doc = document();
    for event in &events {
        assert_eq!(event.json()["type"], "relay.callback_received");
        check_webhook(&doc, "completionEvent", &event.headers, &event.body);
    }
}

#[test]
fn the_same_across_replicas_on_redis() {
    let redis = RedisServer::start();
    let [a, b, c] = [(); 3].map(|_| replica(&redis, &[]));
    stranger_first(&a, &b, &c, "pre-r");
}

/// A registration of 1 s on `a` with a TTL of 2 s; the rest on `b`.
fn tombstone(a: &Relay, b: &Relay, state: &str) {
    let res = As::anyone().register(
        a,
        json!({ "state": state, "ttl_secs": 1, "retrieval_hash": hash_of(SECRET) }),
    );
    assert_eq!(res.status, 201);
    eventually("the registration to expire", || {
        (As::holder(SECRET)
            .get(b, &format!("/api/callback/{state}"))
            .status
            == 410)
            .then_some(())
    });
    // Nobody may take the state over, with another secret or the same.
    for secret in ["a-strangers-secret", SECRET] {
        let res = As::anyone().register(
            b,
            json!({ "state": state, "retrieval_hash": hash_of(secret) }),
        );
        assert_eq!(res.status, 409, "{}", res.text());
        assert_eq!(res.json()["message"], "State already registered or used");
    }
    // The person's late sign-in is refused with a page saying it expired; nothing is stored.
    let late = b.get(&format!("/callback?code=late&state={state}"));
    assert_eq!(late.status, 410);
    assert_eq!(late.media_type(), "text/html");
    assert!(
        late.text().contains("This sign-in has expired"),
        "{}",
        late.text()
    );
    assert_eq!(
        As::holder(SECRET)
            .get(b, &format!("/api/callback/{state}"))
            .status,
        410
    );
    let unknown = As::anyone().get(b, "/api/callback/nobody-knows");
    assert_same_answer(
        &As::holder("a-strangers-secret").get(b, &format!("/api/callback/{state}")),
        &unknown,
        "a stranger",
    );
    // After its time the tombstone goes and the state is free again.
    eventually("the tombstone to go", || {
        let res = As::anyone().register(
            b,
            json!({ "state": state, "retrieval_hash": hash_of("the-next-client") }),
        );
        (res.status == 201).then_some(())
    });
    assert_eq!(
        a.get(&format!("/callback?code=new&state={state}")).status,
        200
    );
    let got = As::holder("the-next-client").get(a, &format!("/api/callback/{state}"));
    assert_eq!(got.json()["auth_code"], "new");
}

#[test]
fn an_expired_registration_leaves_a_tombstone_for_the_ttl() {
    let relay = Relay::start(&["--ttl-secs", "2"]);
    tombstone(&relay, &relay, "tomb");
}

#[test]
fn tombstones_across_replicas_on_redis() {
    let redis = RedisServer::start();
    let (a, b) = (
        replica(&redis, &["--ttl-secs", "2"]),
        replica(&redis, &["--ttl-secs", "2"]),
    );
    tombstone(&a, &b, "tomb-r");
}

/// Registered-states mode: the same, and the state's late callback is not "unregistered".
#[test]
fn in_registered_states_mode_too() {
    let relay = Relay::start(&["--ttl-secs", "2", "--require-registered-state"]);
    tombstone(&relay, &relay, "tomb-m");
}
