//! Long-poll (`?wait=`) and the `oauth-relay wait` command.

use crate::support;

use std::process::Command;
use std::time::Duration;
use support::{eventually, Relay, BIN};

fn parked(relay: &Relay) {
    // The waiter is parked once its request reached the server and no answer went out; there
    // is no observable event for that, so give the request a moment to arrive.
    std::thread::sleep(Duration::from_millis(200));
    let _ = relay;
}

#[test]
fn a_waiting_client_is_answered_when_the_callback_lands() {
    let relay = Relay::start(&[]);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| relay.get("/api/callback/lp1?wait=30"));
        parked(&relay);
        assert!(
            !waiter.is_finished(),
            "the long-poll answered before the callback"
        );
        assert_eq!(relay.get("/callback?code=c1&state=lp1").status, 200);
        let res = waiter.join().unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.json()["auth_code"], "c1");
        assert_eq!(res.header("Access-Control-Allow-Origin"), Some("*"));
    });
    assert_eq!(relay.get("/api/callback/lp1").status, 410);
}

#[test]
fn a_long_poll_times_out_like_an_unknown_state() {
    let relay = Relay::start(&[]);
    let res = relay.get("/api/callback/nobody?wait=1");
    assert_eq!(res.status, 404);
    assert_eq!(res.json()["message"], "Callback not found or expired");
}

#[test]
fn an_already_landed_callback_answers_at_once() {
    let relay = Relay::start(&[]);
    relay.get("/callback?code=c&state=early");
    // wait=60 would take a minute if this parked.
    let res = relay.get("/api/callback/early?wait=60");
    assert_eq!(res.json()["auth_code"], "c");
    assert_eq!(relay.get("/api/callback/early?wait=60").status, 410);
}

#[test]
fn several_waiters_on_one_state_get_the_code_once() {
    let relay = Relay::start(&[]);
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..5)
            .map(|_| s.spawn(|| relay.get("/api/callback/shared?wait=30").status))
            .collect();
        parked(&relay);
        relay.get("/callback?code=c&state=shared");
        let mut statuses: Vec<u16> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        statuses.sort();
        assert_eq!(statuses, vec![200, 410, 410, 410, 410]);
    });
}

#[test]
fn waiters_are_bounded_and_do_not_block_other_requests() {
    // One worker only: parked long-polls must not occupy it.
    let relay = Relay::start(&["--max-waiters", "3", "--workers", "1"]);
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3)
            .map(|i| {
                let relay = &relay;
                s.spawn(move || relay.get(&format!("/api/callback/b{i}?wait=30")))
            })
            .collect();
        eventually("three parked waiters", || {
            relay
                .get("/metrics")
                .text()
                .contains("oauth_relay_waiting_clients 3")
                .then_some(())
        });
        let res = relay.get("/api/callback/extra?wait=30");
        assert_eq!(res.status, 503);
        assert_eq!(
            res.json()["message"],
            "Too many waiting clients; try again later"
        );
        assert_eq!(relay.get("/health").status, 200);
        for i in 0..3 {
            relay.get(&format!("/callback?code=c{i}&state=b{i}"));
        }
        for w in waiters {
            assert_eq!(w.join().unwrap().status, 200);
        }
    });
}

#[test]
fn wait_values_are_checked_and_capped() {
    let relay = Relay::start(&["--max-wait-secs", "1"]);
    assert_eq!(relay.get("/api/callback/x?wait=-1").status, 400);
    assert_eq!(relay.get("/api/callback/x?wait=1.5").status, 400);
    // Capped to 1 second: answers (404) instead of waiting an hour.
    assert_eq!(relay.get("/api/callback/x?wait=3600").status, 404);
}

#[test]
fn sigterm_answers_waiting_clients_and_exits_zero() {
    let mut relay = Relay::start(&[]);
    let addr = relay.addr;
    let waiter =
        std::thread::spawn(move || support::http(addr, "GET", "/api/callback/w?wait=60", &[], b""));
    parked(&relay);
    relay.signal("TERM");
    let res = waiter.join().unwrap();
    assert_eq!(res.status, 404);
    assert!(relay.wait_exit().success());
    relay.wait_for_log("shutdown_complete");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after exit"
    );
}

fn wait_cmd(relay: &Relay, state: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["wait", state, "--server", &relay.url("")])
        .args(extra);
    cmd.env_remove("OAUTH_RELAY_API_TOKEN");
    cmd
}

#[test]
fn the_wait_command_prints_the_callback() {
    let relay = Relay::start(&[]);
    let handle = {
        let mut cmd = wait_cmd(&relay, "cli-2", &["--timeout-secs", "30"]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    parked(&relay);
    relay.get("/callback?code=the-code&state=cli-2");
    let out = handle.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["auth_code"].as_str(), v["state"].as_str()),
        (Some("the-code"), Some("cli-2"))
    );
}

#[test]
fn the_wait_command_reports_provider_errors_timeouts_and_auth() {
    let token = "cli-token-0123456789abcdef";
    let relay = Relay::start(&["--api-token", token]);
    // A state with characters that need encoding in a path.
    relay.get("/callback?state=a%2Fb%20c&error=access_denied");
    let out = wait_cmd(&relay, "a/b c", &["--api-token", token])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["error"],
        "access_denied"
    );
    let out = wait_cmd(
        &relay,
        "never",
        &["--api-token", token, "--timeout-secs", "1"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
    let out = wait_cmd(&relay, "never", &["--timeout-secs", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Missing or invalid API token"));
}
