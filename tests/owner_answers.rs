//! "Not yet" and "expired" are answers of their own (issue 12), for a requester who proved it
//! owns the state (the retrieval secret of a state registered with its hash, or the API token
//! for one registered without): a long-poll that runs out while the callback is awaited is
//! 202 with the seconds the registration has left; an expired registration is 410 at once, and
//! a long-poll parked on one is answered when it expires. Anyone else gets the unknown state's
//! 404, byte for byte, as before; a plain retrieval of a state still waiting says 404 as the
//! Python server did. In memory and across replicas on Redis, and through `oauth-relay wait`.

use crate::support;

use serde_json::json;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Instant;
use support::relay_api::{assert_same_answer, hash_of, replica, waiting_clients, As};
use support::{eventually, oauth_relay, RedisServer, Relay};

const SECRET: &str = "the-owners-secret-0123456789abcdef";
const TOKEN: &str = "api-token-0123456789abcdef";

/// The owner registers `state` on `at` and asks on `ask`: 202 when its wait runs out, 404 to a
/// plain retrieval, the unknown state's answer to anyone else.
fn not_yet(at: &Relay, ask: &Relay, state: &str) {
    let started = Instant::now();
    let res = As::anyone().register(
        at,
        json!({ "state": state, "ttl_secs": 300, "retrieval_hash": hash_of(SECRET) }),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let owner = As::holder(SECRET);
    for wait in ["1", "0"] {
        let res = owner.get(ask, &format!("/api/callback/{state}?wait={wait}"));
        let elapsed = started.elapsed().as_secs();
        assert_eq!(res.status, 202, "wait={wait}: {}", res.text());
        assert_eq!(res.header("Access-Control-Allow-Origin"), Some("*"));
        assert_eq!(res.header("Cache-Control"), Some("no-store"));
        let v = res.json();
        assert_eq!(
            (&v["status"], &v["message"], &v["state"]),
            (
                &json!("pending"),
                &json!("The callback has not arrived yet"),
                &json!(state)
            )
        );
        let left = v["expires_in"].as_u64().unwrap();
        assert!(
            left <= 300 && left + elapsed + 1 >= 300,
            "{left} s left after {elapsed} s"
        );
        assert_eq!(v.as_object().unwrap().len(), 4, "{v}");
    }
    // Anyone else: exactly what an unknown state answers, with the same wait.
    for wait in ["", "?wait=1"] {
        let unknown = As::anyone().get(ask, &format!("/api/callback/nobody-knows{wait}"));
        assert_eq!(unknown.status, 404);
        for (who, stranger) in [
            ("no secret", As::anyone()),
            ("a wrong secret", As::holder("wrong")),
        ] {
            let res = stranger.get(ask, &format!("/api/callback/{state}{wait}"));
            assert_same_answer(&res, &unknown, who);
        }
        // A plain retrieval says 404, as the Python server did, to the owner too.
        if wait.is_empty() {
            let res = owner.get(ask, &format!("/api/callback/{state}"));
            assert_same_answer(&res, &unknown, "the owner, without wait");
        }
    }
    // The callback lands: the owner gets it.
    assert_eq!(
        at.get(&format!("/callback?code=c&state={state}")).status,
        200
    );
    let got = owner.get(ask, &format!("/api/callback/{state}?wait=1"));
    assert_eq!(got.json()["auth_code"], "c");
}

#[test]
fn not_yet_is_202_for_the_owner_and_the_unknown_states_404_for_anyone_else() {
    let relay = Relay::start(&[]);
    not_yet(&relay, &relay, "ny");
}

#[test]
fn not_yet_across_replicas_on_redis() {
    let redis = RedisServer::start();
    let (a, b) = (replica(&redis, &[]), replica(&redis, &[]));
    not_yet(&a, &b, "ny-r");
}

#[test]
fn with_the_api_token_its_holder_owns_a_state_registered_without_a_hash() {
    let relay = Relay::start(&["--api-token", TOKEN]);
    let operator = As::anyone().token(TOKEN);
    let res = operator.register(&relay, json!({ "state": "t1", "ttl_secs": 60 }));
    assert_eq!(res.status, 201);
    let res = operator.get(&relay, "/api/callback/t1?wait=1");
    assert_eq!(res.status, 202, "{}", res.text());
    assert!(res.json()["expires_in"].as_u64().unwrap() <= 60);
    let unknown = operator.get(&relay, "/api/callback/nobody-knows");
    assert_same_answer(
        &operator.get(&relay, "/api/callback/t1"),
        &unknown,
        "a plain retrieval",
    );
    // Without the token: refused, as any retrieval.
    assert_eq!(
        As::anyone().get(&relay, "/api/callback/t1?wait=1").status,
        401
    );
}

/// A long-poll with a wrong secret, parked now on a raw socket we can look at.
fn park_stranger(ask: &Relay, state: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(ask.addr).unwrap();
    write!(
        s,
        "GET /api/callback/{state}?wait=600 HTTP/1.1\r\nHost: x\r\nX-Retrieval-Secret: wrong\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

fn assert_not_answered(s: &mut std::net::TcpStream) {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("answered: {other:?}"),
    }
}

/// A registration of 2 s on `at`; the owner long-polls on `ask` with a wait (600 s) far past
/// both it and the test's own bound (60 s): it is answered when the registration expires.
fn expires(at: &Relay, ask: &Relay, state: &str) {
    let res = As::anyone().register(
        at,
        json!({ "state": state, "ttl_secs": 2, "retrieval_hash": hash_of(SECRET) }),
    );
    assert_eq!(res.status, 201);
    // A stranger parks first, with the same wait.
    let mut stranger = park_stranger(ask, state);
    eventually("the stranger to park", || {
        (waiting_clients(ask) == 1).then_some(())
    });
    let addr = ask.addr;
    let path = format!("/api/callback/{state}?wait=600");
    let owner = std::thread::spawn(move || As::holder(SECRET).send(addr, "GET", &path, &[], b""));
    // Bounded by the test's 60 s, well short of the owner's own 600 s.
    eventually("the owner's answer", || owner.is_finished().then_some(()));
    let got = owner.join().unwrap();
    assert_eq!(got.status, 410, "{}", got.text());
    let expired = json!({ "status": "error",
        "message": "The state's registration expired before its callback arrived" });
    assert_eq!(got.json(), expired);
    // Before its own deadline: the stranger, parked earlier with the same wait, still waits
    // (and will be answered at its deadline, as an unknown state).
    assert_eq!(waiting_clients(ask), 1);
    assert_not_answered(&mut stranger);
    drop(stranger);
    // From now on the owner is told at once, with `wait` or without (a parked one would not be
    // answered within the test's bound), and anyone else as of an unknown state.
    for wait in ["", "?wait=600"] {
        let res = As::holder(SECRET).get(ask, &format!("/api/callback/{state}{wait}"));
        assert_eq!((res.status, res.json()), (410, expired.clone()), "{wait}");
        let unknown = As::anyone().get(ask, "/api/callback/nobody-knows");
        let res = As::holder("wrong").get(ask, &format!("/api/callback/{state}"));
        assert_same_answer(&res, &unknown, "a wrong secret after expiry");
    }
}

#[test]
fn an_expired_registration_is_answered_at_once_and_a_parked_owner_when_it_expires() {
    let relay = Relay::start(&["--max-wait-secs", "600"]);
    expires(&relay, &relay, "ex");
}

#[test]
fn the_same_across_replicas_on_redis() {
    let redis = RedisServer::start();
    let a = replica(&redis, &["--max-wait-secs", "600"]);
    let b = replica(&redis, &["--max-wait-secs", "600"]);
    expires(&a, &b, "ex-r");
}

/// `oauth-relay wait` takes "not yet" for what it is, keeps waiting, and prints the callback;
/// an expired registration ends it at once with the relay's words.
#[test]
fn the_wait_command_keeps_waiting_through_not_yet_and_stops_at_expired() {
    // Long-polls of 1 s: the owner is told "not yet" every second.
    let relay = Relay::start(&["--max-wait-secs", "1"]);
    let server = relay.url("");
    let out = oauth_relay(&["register", "cw", "--server", &server, "--ttl-secs", "300"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let waiter = oauth_relay(&[
        "wait",
        "cw",
        "--server",
        &server,
        "--timeout-secs",
        "120",
        "--retrieval-secret-env",
        "THE_SECRET",
    ])
    .env("THE_SECRET", &secret)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // It was told "not yet" at least once, and waits on.
    relay.wait_for_log("\"status\":202");
    assert_eq!(relay.get("/callback?code=cw-code&state=cw").status, 200);
    let out = waiter.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["auth_code"], "cw-code");

    let out = oauth_relay(&["register", "cx", "--server", &server, "--ttl-secs", "1"])
        .output()
        .unwrap();
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    eventually("the registration to expire", || {
        (As::holder(&secret).get(&relay, "/api/callback/cx").status == 410).then_some(())
    });
    let out = oauth_relay(&[
        "wait",
        "cx",
        "--server",
        &server,
        "--timeout-secs",
        "120",
        "--retrieval-secret-env",
        "THE_SECRET",
    ])
    .env("THE_SECRET", &secret)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registration expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
