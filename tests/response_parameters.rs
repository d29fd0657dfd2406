//! The authorization-response parameters a client needs to finish the flow travel with the
//! code (issue 12): RFC 9207's `iss` (the MCP Python SDK refuses a sign-in without it when the
//! server advertises `authorization_response_iss_parameter_supported`), OpenID Connect's
//! `session_state` and RFC 6749's `error_uri`. They come back as new fields of
//! `/api/callback/{state}` (every old field as it was), on both stores and across replicas, and
//! `oauth-relay wait` prints them; each is bounded; the issuer is part of what makes two
//! callbacks the same.

use crate::support;

use serde_json::json;
use std::process::Command;
use support::relay_api::replica;
use support::{RedisServer, Relay, BIN};

const ISS: &str = "https://as.example/tenant-1";
const ISS_ENCODED: &str = "https%3A%2F%2Fas.example%2Ftenant-1";

/// Callbacks land on `at`, are fetched from `from` (the same relay, or another replica).
fn round_trip(at: &Relay, from: &Relay) {
    let page = at.get(&format!(
        "/callback?code=c1&state=s1&iss={ISS_ENCODED}&session_state=ss-1"
    ));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Authentication Successful"));
    // A reload (same issuer) is one; the same code from another issuer is another callback.
    let reload = at.get(&format!(
        "/callback?code=c1&state=s1&iss={ISS_ENCODED}&session_state=ss-1"
    ));
    assert_eq!(reload.status, 200);
    let got = from.get("/api/callback/s1");
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json(),
        json!({ "status": "success", "auth_code": "c1", "state": "s1", "error": null,
                "error_description": null, "iss": ISS, "session_state": "ss-1",
                "error_uri": null })
    );
    // A provider's error with its page about it.
    at.get("/callback?state=s2&error=access_denied&error_description=No&error_uri=https%3A%2F%2Fas.example%2Fe%3Fid%3D1");
    assert_eq!(
        from.get("/api/callback/s2").json(),
        json!({ "status": "success", "auth_code": null, "state": "s2", "error": "access_denied",
                "error_description": "No", "iss": null, "session_state": null,
                "error_uri": "https://as.example/e?id=1" })
    );
    // Without them: the Python server's answer, and the new fields null.
    at.get("/callback?code=c3&state=s3");
    assert_eq!(
        from.get("/api/callback/s3").json(),
        json!({ "status": "success", "auth_code": "c3", "state": "s3", "error": null,
                "error_description": null, "iss": null, "session_state": null,
                "error_uri": null })
    );
    // Parameters nobody needs to finish the flow are not kept.
    at.get("/callback?code=c4&state=s4&foo=bar&scope=openid");
    let v = from.get("/api/callback/s4").json();
    assert_eq!(v.as_object().unwrap().len(), 8, "{v}");
}

#[test]
fn iss_and_the_other_kept_parameters_come_back_with_the_code() {
    let relay = Relay::start(&[]);
    round_trip(&relay, &relay);
}

#[test]
fn they_travel_across_replicas_on_redis() {
    let redis = RedisServer::start();
    let (a, b) = (replica(&redis, &[]), replica(&redis, &[]));
    round_trip(&a, &b);
}

#[test]
fn another_issuer_is_another_callback() {
    let relay = Relay::start(&[]);
    assert_eq!(
        relay
            .get(&format!("/callback?code=same&state=f&iss={ISS_ENCODED}"))
            .status,
        200
    );
    let other = relay.get("/callback?code=same&state=f&iss=https%3A%2F%2Fevil.example");
    assert_eq!(other.status, 409);
    assert_eq!(relay.get("/api/callback/f").status, 409);
}

#[test]
fn a_callback_past_the_bounds_is_refused_and_stores_nothing() {
    let relay = Relay::start(&[]);
    let a = |n: usize| "a".repeat(n);
    // At the bounds: kept.
    for (state, query) in [
        ("at-1", format!("code={}", a(4096))),
        (
            "at-2",
            format!("code={}&error_description={}", a(4096), a(2048)),
        ),
        ("at-3", format!("code=c&iss=https://{}", a(4096 - 8))),
    ] {
        let res = relay.get(&format!("/callback?state={state}&{query}"));
        assert_eq!(res.status, 200, "{state}");
    }
    let stored = relay.active_callbacks();
    // One byte over: a parameter, or all of them together.
    for (state, query) in [
        ("over-1", format!("code={}", a(4097))),
        ("over-2", format!("code=c&iss=https://{}", a(4096 - 7))),
        ("over-3", format!("code=c&session_state={}", a(4097))),
        ("over-4", format!("code=c&error_uri={}", a(4097))),
        ("over-5", format!("error=e&error_description={}", a(4097))),
        (
            "over-6",
            format!("code={}&error_description={}", a(4096), a(2049)),
        ),
    ] {
        let res = relay.get(&format!("/callback?state={state}&{query}"));
        assert_eq!(res.status, 400, "{state}");
        assert_eq!(res.media_type(), "text/html");
        assert!(
            res.text().contains("longer than 4096 bytes"),
            "{state}: {}",
            res.text()
        );
        assert_eq!(relay.get(&format!("/api/callback/{state}")).status, 404);
    }
    assert_eq!(relay.active_callbacks(), stored);
    let v = relay.get("/api/callback/at-3").json();
    assert_eq!(v["iss"].as_str().unwrap().len(), 4096);
}

#[test]
fn the_wait_command_prints_them() {
    let relay = Relay::start(&[]);
    relay.get(&format!(
        "/callback?code=cli&state=w1&iss={ISS_ENCODED}&session_state=ss"
    ));
    let mut cmd = Command::new(BIN);
    cmd.args(["wait", "w1", "--server", &relay.url("")]);
    cmd.env_remove("OAUTH_RELAY_API_TOKEN");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["auth_code"].as_str(),
            v["iss"].as_str(),
            v["session_state"].as_str()
        ),
        (Some("cli"), Some(ISS), Some("ss"))
    );
    assert!(v["error_uri"].is_null());
}
