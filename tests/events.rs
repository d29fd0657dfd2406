//! Signed completion events end to end: the real binary sends them to a real receiver
//! (tests/support/webhook_receiver.rs) that verifies every signature with its own HMAC and
//! refuses stale or forged requests. Relay callbacks, broker sign-ins (against the fake
//! Microsoft), retries, giving up, the queue bound, a slow receiver, and replicas on a real
//! Redis where the replica that produced an event dies before delivering it.

use crate::support;

use serde_json::{json, Value};
use support::fake_microsoft::{FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::webhook_receiver::{test_secret, Receiver, Verdict};
use support::{eventually, free_port, get_url, path_of, RedisServer, Relay};

const BROKER_TOKEN: &str = "broker-token-0123456789abcdef";
const EMAIL: &str = "ana.silva@contoso.example";
const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The webhook settings for `receiver`, plus `extra`.
fn webhook_env<'a>(receiver: &Receiver, extra: &[(&'a str, &'a str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("OAUTH_RELAY_WEBHOOK_URL".to_string(), receiver.url()),
        ("OAUTH_RELAY_WEBHOOK_SECRET".to_string(), test_secret()),
        // Retries come quickly in tests; the doubling and jitter are the same.
        (
            "OAUTH_RELAY_WEBHOOK_RETRY_BASE_MS".to_string(),
            "50".to_string(),
        ),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn relay_with(receiver: &Receiver, extra: &[(&str, &str)]) -> Relay {
    let env = webhook_env(receiver, extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Relay::start_env(&[], &env)
}

/// A counter or gauge from /metrics.
fn metric(relay: &Relay, name: &str) -> u64 {
    let text = relay.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

fn events_for(receiver: &Receiver, handle_of: &str) -> Vec<Value> {
    let hash = sha256_hex(handle_of);
    receiver
        .accepted()
        .iter()
        .map(|a| a.json())
        .filter(|e| e["data"]["handle"] == hash.as_str())
        .collect()
}

#[test]
fn the_test_receiver_refuses_forgeries_and_counts_replays() {
    let receiver = Receiver::start(&test_secret());
    let relay = relay_with(&receiver, &[]);
    assert_eq!(relay.get("/callback?code=c&state=rx-1").status, 200);
    let first = eventually("the event", || receiver.accepted().into_iter().next());
    let ts = first.timestamp.to_string();
    let headers = |sig: &str| {
        vec![
            ("webhook-id".to_string(), first.id.clone()),
            ("webhook-timestamp".to_string(), ts.clone()),
            ("webhook-signature".to_string(), sig.to_string()),
        ]
    };
    let send = |h: Vec<(String, String)>, body: &str| {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        receiver.post(&h, body).status
    };
    // The same request again (a replay): acknowledged, not accepted twice.
    assert_eq!(send(headers(&first.signature), &first.body), 204);
    // A changed body, a wrong signature, a signature for another timestamp: refused.
    let tampered = first.body.replace("succeeded", "failed");
    assert_eq!(send(headers(&first.signature), &tampered), 401);
    assert_eq!(send(headers("v1,AAAA"), &first.body), 401);
    let mut old = headers(&first.signature);
    old[1].1 = (first.timestamp - 3600).to_string();
    assert_eq!(send(old, &first.body), 401);
    let verdicts: Vec<Verdict> = receiver.attempts().into_iter().map(|a| a.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Accepted,
            Verdict::Duplicate,
            Verdict::BadSignature,
            Verdict::BadSignature,
            Verdict::Stale
        ]
    );
}

#[test]
fn a_relay_callback_sends_one_signed_event_without_the_code() {
    let receiver = Receiver::start(&test_secret());
    // One delivery thread: events arrive in the order they were produced.
    let relay = relay_with(&receiver, &[("OAUTH_RELAY_WEBHOOK_WORKERS", "1")]);
    let state = "state-Zq81-event-test";
    assert_eq!(
        relay
            .get(&format!("/callback?code=CODE-never-sent-9&state={state}"))
            .status,
        200
    );
    // A reload of the same redirect is not a new callback.
    assert_eq!(
        relay
            .get(&format!("/callback?code=CODE-never-sent-9&state={state}"))
            .status,
        200
    );
    assert_eq!(
        relay
            .get("/callback?error=access_denied&error_description=Nope%20%3Cb%3E&state=st-denied")
            .status,
        200
    );
    assert_eq!(
        relay
            .get("/callback?error=%3Cscript%3E&state=st-odd")
            .status,
        200
    );
    eventually("three events, the last one included", || {
        (!events_for(&receiver, "st-odd").is_empty()).then_some(())
    });

    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    assert!(attempts.iter().all(|a| a.verdict == Verdict::Accepted));
    let ok = &attempts[0];
    let event = ok.json();
    assert_eq!(event["type"], "relay.callback_received");
    assert_eq!(
        event["data"],
        json!({ "handle": sha256_hex(state), "status": "succeeded", "reason": null })
    );
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(ok.id.starts_with("evt_") && ok.id.len() >= 26, "{}", ok.id);
    let header = |name: &str| {
        ok.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert!(header("webhook-signature").unwrap().starts_with("v1,"));
    for a in &attempts {
        assert!(
            !a.body.contains("CODE-never") && !a.body.contains(state) && !a.body.contains("<b>")
        );
    }
    assert_eq!(
        attempts[1].json()["data"],
        json!({ "handle": sha256_hex("st-denied"), "status": "failed", "reason": "access_denied" })
    );
    // Stranger-supplied error text that is not an OAuth error code is not passed on.
    assert_eq!(attempts[2].json()["data"]["reason"], "provider_error");
    let ids: std::collections::HashSet<&str> = attempts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "ids are unique per event");

    assert_eq!(metric(&relay, "oauth_relay_webhook_events_queued_total"), 3);
    eventually("the delivered count", || {
        (metric(&relay, "oauth_relay_webhook_events_delivered_total") == 3).then_some(())
    });
    assert_eq!(
        metric(&relay, "oauth_relay_webhook_events_retried_total"),
        0
    );
    assert!(!relay
        .logs()
        .iter()
        .any(|l| l.contains("CODE-never") || l.contains("whsec_")));
}

/// A fake Microsoft and a broker sending events to `receiver` (the set-up of tests/broker.rs,
/// reduced to what events need).
fn broker(receiver: &Receiver, tweak: impl FnOnce(&mut FakeConfig)) -> (FakeMicrosoft, Relay) {
    broker_with(receiver, tweak, &[])
}

/// `broker` with `extra` settings.
fn broker_with(
    receiver: &Receiver,
    tweak: impl FnOnce(&mut FakeConfig),
    extra: &[(&str, &str)],
) -> (FakeMicrosoft, Relay) {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut cfg = FakeConfig {
        redirect_uris: vec![format!("{public}/m365/callback")],
        ..FakeConfig::default()
    };
    tweak(&mut cfg);
    let fake = FakeMicrosoft::start_with(cfg.clone());
    let base = fake.base_url();
    let mut env = webhook_env(receiver, extra);
    for (k, v) in [
        ("WK_PUBLIC_BASE_URL", public.as_str()),
        ("WK_M365_CLIENT_ID", cfg.client_id.as_str()),
        ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID),
        ("WK_M365_BROKER_TOKEN", BROKER_TOKEN),
        ("WK_M365_LOGIN_BASE_URL", base.as_str()),
        ("WK_M365_GRAPH_BASE_URL", base.as_str()),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let port = port.to_string();
    (fake, Relay::start_env(&["--port", &port], &env))
}

/// Creates a session, follows the link to the fake Microsoft and lands on the callback.
fn sign_in(relay: &Relay) -> (Value, u16) {
    let auth = format!("Bearer {BROKER_TOKEN}");
    let res = relay.request(
        "POST",
        "/m365/sessions",
        &[("Authorization", &auth)],
        json!({ "expected_email": EMAIL }).to_string().as_bytes(),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let session = res.json();
    let res = relay.get(&path_of(session["login_url"].as_str().unwrap()));
    assert_eq!(res.status, 302);
    let res = get_url(res.header("Location").unwrap());
    assert_eq!(res.status, 302, "{}", res.text());
    let page = relay.get(&path_of(res.header("Location").unwrap()));
    (session, page.status)
}

#[test]
fn a_broker_sign_in_that_succeeds_and_one_that_fails_send_events() {
    let receiver = Receiver::start(&test_secret());
    let (_fake, relay) = broker(&receiver, |_| {});
    let (session, status) = sign_in(&relay);
    assert_eq!(status, 200);
    let handle = session["state"].as_str().unwrap();
    let events = eventually("the success event", || {
        Some(events_for(&receiver, handle)).filter(|e| !e.is_empty())
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "broker.sign_in_succeeded");
    assert_eq!(
        events[0]["data"],
        json!({ "handle": sha256_hex(handle), "provider": "m365", "status": "succeeded", "reason": null })
    );
    // The tokens it announces are fetched with the handle; none of them is in the event.
    let tokens = relay
        .get_auth(&format!("/token/{handle}"), BROKER_TOKEN)
        .json();
    let body = receiver.accepted()[0].body.clone();
    for secret in [
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
        handle,
        EMAIL,
    ] {
        assert!(!body.contains(secret), "{secret} in the event");
    }

    let receiver2 = Receiver::start(&test_secret());
    let (_fake, relay) = broker(&receiver2, |c| c.cancel = true);
    let (session, status) = sign_in(&relay);
    assert_eq!(status, 200, "the cancel page");
    let handle = session["state"].as_str().unwrap();
    let events = eventually("the failure event", || {
        Some(events_for(&receiver2, handle)).filter(|e| !e.is_empty())
    });
    assert_eq!(events[0]["type"], "broker.sign_in_failed");
    assert_eq!(
        events[0]["data"],
        json!({ "handle": sha256_hex(handle), "provider": "m365", "status": "failed", "reason": "access_denied" })
    );
    assert_eq!(receiver2.attempts().len(), 1);
}

#[test]
fn a_receiver_failing_twice_gets_the_event_once_with_one_id() {
    let receiver = Receiver::start(&test_secret());
    receiver.fail_next(&[500, 503]);
    let relay = relay_with(&receiver, &[]);
    assert_eq!(relay.get("/callback?code=c&state=st-retry").status, 200);
    eventually("the event to be accepted", || {
        (receiver.accepted().len() == 1).then_some(())
    });
    eventually("the delivery to be counted", || {
        (metric(&relay, "oauth_relay_webhook_events_delivered_total") == 1).then_some(())
    });
    let attempts = receiver.attempts();
    let verdicts: Vec<&Verdict> = attempts.iter().map(|a| &a.verdict).collect();
    assert_eq!(
        verdicts,
        [
            &Verdict::Failed(500),
            &Verdict::Failed(503),
            &Verdict::Accepted
        ]
    );
    assert!(attempts
        .iter()
        .all(|a| a.id == attempts[0].id && a.body == attempts[0].body));
    assert_eq!(
        metric(&relay, "oauth_relay_webhook_events_retried_total"),
        2
    );
    assert_eq!(
        metric(&relay, "oauth_relay_webhook_events_gave_up_total"),
        0
    );
    assert_eq!(
        relay
            .logs()
            .iter()
            .filter(|l| l.contains("\"webhook_retry\""))
            .count(),
        2
    );
    // Acknowledged once: nothing more arrives (a later event is delivered alone).
    assert_eq!(relay.get("/callback?code=c&state=st-after").status, 200);
    eventually("the later event", || {
        (!events_for(&receiver, "st-after").is_empty()).then_some(())
    });
    assert_eq!(receiver.attempts().len(), 4);
}

#[test]
fn an_event_is_given_up_after_the_attempt_bound() {
    let receiver = Receiver::start(&test_secret());
    receiver.fail_next(&[500; 10]);
    let relay = relay_with(&receiver, &[("OAUTH_RELAY_WEBHOOK_MAX_ATTEMPTS", "3")]);
    assert_eq!(relay.get("/callback?code=c&state=st-doomed").status, 200);
    let line = relay.wait_for_log("\"webhook_gave_up\"");
    assert!(
        line.contains("\"attempts\":3") && line.contains("HTTP 500"),
        "{line}"
    );
    assert_eq!(receiver.attempts().len(), 3);
    assert_eq!(
        metric(&relay, "oauth_relay_webhook_events_gave_up_total"),
        1
    );
    assert_eq!(
        metric(&relay, "oauth_relay_webhook_events_retried_total"),
        2
    );
    eventually("an empty queue", || {
        (metric(&relay, "oauth_relay_webhook_queue_length") == 0).then_some(())
    });
}

#[test]
fn past_the_queue_bound_the_oldest_events_are_dropped() {
    let receiver = Receiver::down(&test_secret());
    let relay = relay_with(
        &receiver,
        &[
            ("OAUTH_RELAY_WEBHOOK_MAX_QUEUE", "2"),
            // One delivery thread: at most one event is being attempted at any time.
            ("OAUTH_RELAY_WEBHOOK_WORKERS", "1"),
        ],
    );
    for i in 1..=5 {
        assert_eq!(
            relay.get(&format!("/callback?code=c&state=st-q{i}")).status,
            200
        );
    }
    assert_eq!(
        metric(
            &relay,
            "oauth_relay_webhook_events_dropped_total{class=\"unregistered\"}"
        ),
        3
    );
    relay.wait_for_log("\"webhook_dropped\"");
    receiver.up();
    eventually("the two newest events", || {
        (events_for(&receiver, "st-q4").len() + events_for(&receiver, "st-q5").len() == 2)
            .then_some(())
    });
    // A dropped event is not attempted again; one whose attempt was under way when it was
    // dropped finishes that attempt (which reaches the receiver if it came up meanwhile).
    let older: usize = (1..=3)
        .map(|i| events_for(&receiver, &format!("st-q{i}")).len())
        .sum();
    assert!(older <= 1, "{older} dropped events were delivered");
    eventually("an empty queue", || {
        (metric(&relay, "oauth_relay_webhook_queue_length") == 0).then_some(())
    });
}

const API_TOKEN: &str = "api-token-0123456789abcdef";

/// Issue 13, item 7: while the receiver is down, a flood of callbacks for states nobody
/// registered (anyone can send those) fills the small outbox; a broker sign-in and a registered
/// state's callback that come in the middle of the flood still get their events out when the
/// receiver is back, the junk is dropped (and counted as such), and the queue stays bounded.
fn strangers_cannot_evict_real_events(relay: &Relay, receiver: &Receiver, max_queue: usize) {
    let auth = format!("Bearer {API_TOKEN}");
    let registered = relay.request(
        "POST",
        "/api/states",
        &[("Authorization", &auth)],
        json!({ "state": "st-registered-1" }).to_string().as_bytes(),
    );
    assert_eq!(registered.status, 201, "{}", registered.text());
    let flood = |from: usize| {
        for i in from..from + 40 {
            let path = format!("/callback?code=junk&state=st-junk-{i}");
            assert_eq!(relay.get(&path).status, 200);
        }
    };
    flood(0);
    let (session, status) = sign_in(relay);
    assert_eq!(status, 200);
    let registered_callback = relay.get("/callback?code=c&state=st-registered-1");
    assert_eq!(registered_callback.status, 200);
    flood(40);
    // Every junk event past the bound was dropped, none of the others.
    let dropped = |class: &str| {
        metric(
            relay,
            &format!("oauth_relay_webhook_events_dropped_total{{class=\"{class}\"}}"),
        )
    };
    assert_eq!(dropped("registered"), 0);
    assert!(
        dropped("unregistered") >= (80 - max_queue) as u64,
        "{} unregistered events dropped",
        dropped("unregistered")
    );
    relay.wait_for_log("\"webhook_dropped\"");
    receiver.up();
    let handle = session["state"].as_str().unwrap();
    let signed_in = eventually("the sign-in's event", || {
        Some(events_for(receiver, handle)).filter(|e| !e.is_empty())
    });
    assert_eq!(signed_in[0]["type"], "broker.sign_in_succeeded");
    let callback = eventually("the registered state's event", || {
        Some(events_for(receiver, "st-registered-1")).filter(|e| !e.is_empty())
    });
    assert_eq!(callback[0]["data"]["status"], "succeeded");
    eventually("an empty queue", || {
        (metric(relay, "oauth_relay_webhook_queue_length") == 0).then_some(())
    });
    // What junk got through is what the bound let stay (an attempt under way when its event
    // was dropped may finish too).
    let junk = receiver
        .accepted()
        .iter()
        .filter(|a| a.json()["type"] == "relay.callback_received")
        .count()
        - 1;
    assert!(junk <= max_queue, "{junk} junk events delivered");
}

#[test]
fn strangers_callbacks_cannot_evict_real_events_from_the_memory_outbox() {
    let receiver = Receiver::down(&test_secret());
    let (_fake, relay) = broker_with(
        &receiver,
        |_| {},
        &[
            ("OAUTH_RELAY_WEBHOOK_MAX_QUEUE", "6"),
            ("OAUTH_RELAY_WEBHOOK_WORKERS", "1"),
            ("OAUTH_RELAY_API_TOKEN", API_TOKEN),
        ],
    );
    strangers_cannot_evict_real_events(&relay, &receiver, 6);
}

#[test]
fn strangers_callbacks_cannot_evict_real_events_from_the_redis_outbox() {
    let redis = RedisServer::start();
    let receiver = Receiver::down(&test_secret());
    let url = redis.url();
    let (_fake, relay) = broker_with(
        &receiver,
        |_| {},
        &[
            ("OAUTH_RELAY_WEBHOOK_MAX_QUEUE", "6"),
            ("OAUTH_RELAY_WEBHOOK_WORKERS", "1"),
            ("OAUTH_RELAY_API_TOKEN", API_TOKEN),
            ("OAUTH_RELAY_REDIS_URL", &url),
            ("OAUTH_RELAY_ENCRYPTION_KEY", KEY),
        ],
    );
    strangers_cannot_evict_real_events(&relay, &receiver, 6);
}

#[test]
fn a_slow_receiver_does_not_hold_up_callbacks() {
    let receiver = Receiver::start(&test_secret());
    receiver.hold();
    let relay = relay_with(&receiver, &[("OAUTH_RELAY_WEBHOOK_TIMEOUT_MS", "600000")]);
    assert_eq!(relay.get("/callback?code=c&state=st-slow-0").status, 200);
    eventually("the receiver to hold the first delivery", || {
        (receiver.held() >= 1).then_some(())
    });
    // Every delivery thread may be stuck on the receiver now; callbacks go on regardless.
    let mut completed = 0;
    for i in 1..=200 {
        if relay
            .get(&format!("/callback?code=c&state=st-slow-{i}"))
            .status
            == 200
        {
            completed += 1;
        }
    }
    assert_eq!(completed, 200);
    assert!(
        receiver.held() >= 1,
        "the receiver let go while the callbacks ran"
    );
    assert!(receiver.accepted().is_empty());
    assert_eq!(
        metric(&relay, "oauth_relay_webhook_events_queued_total"),
        201
    );
    receiver.release();
    eventually("all 201 events", || {
        (receiver.accepted().len() == 201).then_some(())
    });
}

fn replica(redis: &RedisServer, receiver: &Receiver) -> Relay {
    replica_with(redis, receiver, &[])
}

fn replica_with(redis: &RedisServer, receiver: &Receiver, extra: &[(&str, &str)]) -> Relay {
    let url = redis.url();
    let mut env = webhook_env(receiver, &[("OAUTH_RELAY_WEBHOOK_RETRY_BASE_MS", "100")]);
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    env.push(("OAUTH_RELAY_REDIS_URL".into(), url));
    env.push(("OAUTH_RELAY_ENCRYPTION_KEY".into(), KEY.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let relay = Relay::start_env(&[], &env);
    eventually("the replica to be ready", || {
        (relay.get("/ready").status == 200).then_some(())
    });
    relay
}

#[test]
fn an_event_outlives_the_replica_that_produced_it() {
    let redis = RedisServer::start();
    let receiver = Receiver::down(&test_secret());
    let mut producer = replica(&redis, &receiver);
    let others = [replica(&redis, &receiver), replica(&redis, &receiver)];
    let state = "st-orphan-7Hq";
    assert_eq!(
        producer
            .get(&format!("/callback?code=CODE-orphan&state={state}"))
            .status,
        200
    );
    // Produced, attempted (by whichever replica claimed it), and still undelivered.
    eventually("a failed attempt", || {
        std::iter::once(&producer)
            .chain(&others)
            .any(|r| r.logs().iter().any(|l| l.contains("\"webhook_retry\"")))
            .then_some(())
    });
    // Nothing in Redis gives the flow away.
    let dump = redis.dump();
    for needle in [
        state,
        &sha256_hex(state),
        "CODE-orphan",
        "callback_received",
    ] {
        assert!(
            !dump.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is in Redis in the clear"
        );
    }
    producer.signal("KILL");
    producer.wait_exit();
    receiver.up();
    let events = eventually("another replica to deliver it", || {
        Some(events_for(&receiver, state)).filter(|e| !e.is_empty())
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "relay.callback_received");
    // Counted once the receiver's answer is read, a moment after it recorded the event.
    eventually("one replica to count the delivery", || {
        let delivered: u64 = others
            .iter()
            .map(|r| metric(r, "oauth_relay_webhook_events_delivered_total"))
            .sum();
        (delivered == 1).then_some(())
    });
    eventually("the shared queue to be empty", || {
        (metric(&others[0], "oauth_relay_webhook_queue_length") == 0).then_some(())
    });
}

#[test]
fn webhook_settings_are_checked_at_start_up() {
    let run = |env: &[(&str, &str)]| {
        // Only the settings under test, whatever the caller's environment holds.
        let out = support::oauth_relay(&["--host", "127.0.0.1", "--port", "0"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let secret = test_secret();
    for (env, words) in [
        (
            vec![
                ("OAUTH_RELAY_WEBHOOK_URL", "http://hooks.example/x"),
                ("OAUTH_RELAY_WEBHOOK_SECRET", secret.as_str()),
            ],
            "OAUTH_RELAY_WEBHOOK_URL (--webhook-url) must be an https:// URL",
        ),
        (
            vec![("OAUTH_RELAY_WEBHOOK_URL", "https://hooks.example/x")],
            "needs OAUTH_RELAY_WEBHOOK_SECRET",
        ),
        (
            vec![
                ("OAUTH_RELAY_WEBHOOK_URL", "https://hooks.example/x"),
                ("OAUTH_RELAY_WEBHOOK_SECRET", "whsec_c2hvcnQ="),
            ],
            "at least 16 key bytes",
        ),
    ] {
        let (code, stderr) = run(&env);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(words), "{words}: {stderr}");
        assert!(
            !stderr.contains("c2hvcnQ") && !stderr.contains(&secret[6..]),
            "{stderr}"
        );
    }
}

#[test]
fn a_replica_killed_mid_delivery_leaves_the_event_to_another_after_its_lease() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&test_secret());
    receiver.hold();
    // An attempt may take 1 s, so a claim's lease is 3 s (twice the timeout and 1 s).
    let env = [("OAUTH_RELAY_WEBHOOK_TIMEOUT_MS", "1000")];
    let mut producer = replica_with(&redis, &receiver, &env);
    assert_eq!(producer.get("/callback?code=c&state=st-mid").status, 200);
    eventually("the producer to be mid-delivery", || {
        (receiver.held() == 1).then_some(())
    });
    producer.signal("KILL");
    producer.wait_exit();
    // The dead replica's request reaches the receiver, but nobody acknowledged it in Redis.
    receiver.release();
    let other = replica_with(&redis, &receiver, &env);
    eventually("the other replica to deliver it again", || {
        (metric(&other, "oauth_relay_webhook_events_delivered_total") == 1).then_some(())
    });
    let attempts = receiver.attempts();
    let verdicts: Vec<&Verdict> = attempts.iter().map(|a| &a.verdict).collect();
    assert_eq!(verdicts, [&Verdict::Accepted, &Verdict::Duplicate]);
    assert_eq!(
        attempts[0].id, attempts[1].id,
        "a re-delivery keeps its webhook-id"
    );
}

#[test]
fn at_sigterm_queued_events_get_the_grace_period_and_what_is_left_is_logged() {
    // A retry due within the grace period is still made before the process exits.
    let receiver = Receiver::start(&test_secret());
    receiver.fail_next(&[500]);
    let mut relay = relay_with(&receiver, &[("OAUTH_RELAY_WEBHOOK_RETRY_BASE_MS", "1000")]);
    assert_eq!(relay.get("/callback?code=c&state=st-term").status, 200);
    relay.wait_for_log("\"webhook_retry\"");
    relay.signal("TERM");
    assert!(relay.wait_exit().success());
    assert_eq!(receiver.accepted().len(), 1);
    assert!(!relay
        .logs()
        .iter()
        .any(|l| l.contains("webhook_undelivered_at_exit")));

    // One that cannot be delivered in time is reported as lost.
    let down = Receiver::down(&test_secret());
    let mut relay = relay_with(
        &down,
        &[
            ("OAUTH_RELAY_WEBHOOK_RETRY_BASE_MS", "600000"),
            ("OAUTH_RELAY_SHUTDOWN_GRACE_SECS", "1"),
        ],
    );
    assert_eq!(relay.get("/callback?code=c&state=st-lost").status, 200);
    relay.wait_for_log("\"webhook_retry\"");
    relay.signal("TERM");
    assert!(relay.wait_exit().success());
    let line = relay.wait_for_log("\"webhook_undelivered_at_exit\"");
    assert!(line.contains("\"events\":1"), "{line}");
}

#[test]
fn the_secret_can_come_from_a_file() {
    let receiver = Receiver::start(&test_secret());
    let path = std::env::temp_dir().join(format!("oauth-relay-whsec-{}", free_port()));
    std::fs::write(&path, format!("{}\n", test_secret())).unwrap();
    let relay = relay_with(
        &receiver,
        &[
            ("OAUTH_RELAY_WEBHOOK_SECRET", ""),
            ("OAUTH_RELAY_WEBHOOK_SECRET_FILE", path.to_str().unwrap()),
        ],
    );
    assert_eq!(relay.get("/callback?code=c&state=st-file").status, 200);
    eventually("the event, verified with the same secret", || {
        (events_for(&receiver, "st-file").len() == 1).then_some(())
    });
    let _ = std::fs::remove_file(&path);
}

#[test]
fn after_redis_restarts_events_are_still_queued_and_delivered() {
    let mut redis = RedisServer::start();
    let receiver = Receiver::start(&test_secret());
    let r = replica(&redis, &receiver);
    assert_eq!(r.get("/callback?code=c&state=st-before").status, 200);
    eventually("the first event", || {
        (events_for(&receiver, "st-before").len() == 1).then_some(())
    });
    let drops = || {
        r.logs()
            .iter()
            .filter(|l| l.contains("\"redis_subscriber\""))
            .count()
    };
    let before = drops();
    // Every connection the outbox pooled dies with it.
    redis.restart();
    eventually("the replica to see Redis go", || {
        (drops() > before).then_some(())
    });
    eventually("the replica to be ready again", || {
        (r.get("/ready").status == 200).then_some(())
    });
    for i in 0..20 {
        assert_eq!(
            r.get(&format!("/callback?code=c&state=st-after-{i}"))
                .status,
            200
        );
    }
    eventually("the events produced after the restart", || {
        (0..20)
            .all(|i| events_for(&receiver, &format!("st-after-{i}")).len() == 1)
            .then_some(())
    });
    assert_eq!(
        metric(&r, "oauth_relay_webhook_events_enqueue_failed_total"),
        0
    );
}

/// Events the version before tagged keys queued (`<prefix>events:*` and a hash per event,
/// sealed under its own key's name) are moved into this version's outbox and delivered, with
/// the id they were given: a rolling upgrade loses no queued event.
#[test]
fn events_queued_under_the_untagged_names_of_the_previous_version_are_delivered() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(&test_secret());
    let keys = oauth_relay::keyring::Keyring::parse(KEY).unwrap();
    let cli = |args: &[&[u8]]| {
        let mut con = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut con).unwrap();
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let handles = ["st-queued-old-1", "st-queued-old-2"];
    for (i, handle) in handles.iter().enumerate() {
        let id = format!("evt_old{i}");
        let body = json!({
            "type": "relay.callback_received",
            "timestamp": "2026-12-01T10:00:00.000Z",
            "data": { "handle": sha256_hex(handle), "outcome": "code" },
        })
        .to_string();
        let hash = format!("oauth-relay:event:{id}");
        let sealed = keys.seal(hash.as_bytes(), body.as_bytes());
        cli(&[
            b"HSET",
            hash.as_bytes(),
            b"body",
            &sealed,
            b"attempts",
            b"0",
            b"created",
            now_ms.as_bytes(),
            b"token",
            b"",
        ]);
        cli(&[
            b"ZADD",
            b"oauth-relay:events:age",
            now_ms.as_bytes(),
            id.as_bytes(),
        ]);
        cli(&[
            b"ZADD",
            b"oauth-relay:events:due",
            now_ms.as_bytes(),
            id.as_bytes(),
        ]);
    }
    let r = replica(&redis, &receiver);
    eventually("both old events", || {
        handles
            .iter()
            .all(|h| events_for(&receiver, h).len() == 1)
            .then_some(())
    });
    let ids: Vec<String> = receiver.accepted().iter().map(|a| a.id.clone()).collect();
    assert!(ids.contains(&"evt_old0".to_string()) && ids.contains(&"evt_old1".to_string()));
    r.wait_for_log("\"webhook_events_moved\"");
    // Nothing is left under the old names.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("oauth-relay:event*")
        .query(&mut con)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// The Redis outbox on a Redis Cluster: its keys share one slot, so every script runs there.
#[test]
fn events_are_delivered_from_a_redis_cluster() {
    let cluster = support::redis_topology::ClusterSet::start();
    let receiver = Receiver::start(&test_secret());
    let mut env = webhook_env(&receiver, &[]);
    env.push((
        "OAUTH_RELAY_REDIS_CLUSTER_NODES".into(),
        cluster.seeds().join(","),
    ));
    env.push(("OAUTH_RELAY_ENCRYPTION_KEY".into(), KEY.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = Relay::start_env(&[], &env);
    eventually("the replica to be ready", || {
        (r.get("/ready").status == 200).then_some(())
    });
    for i in 0..10 {
        assert_eq!(
            r.get(&format!("/callback?code=c&state=st-cluster-{i}"))
                .status,
            200
        );
    }
    eventually("every event", || {
        (0..10)
            .all(|i| events_for(&receiver, &format!("st-cluster-{i}")).len() == 1)
            .then_some(())
    });
}
