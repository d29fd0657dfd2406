//! Web pages on other origins and the retrieval endpoints (CORS): a page in a real headless
//! Chromium registers a state with a retrieval hash and long-polls for its code with the secret
//! in a custom header, the browser's preflights passing; a page of an origin the operator does
//! not list is stopped by the browser. And the headers themselves, over plain HTTP.

use crate::support;
use support::oidc;

use serde_json::Value;
use std::process::Command;
use support::{free_port, Relay};

const PAGE: (&str, &str) = ("Origin", "http://127.0.0.1:9");

/// The access-log lines of `method` on `route`, as (status) list.
fn requests(relay: &Relay, method: &str, route: &str) -> Vec<u64> {
    relay
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "request" && v["method"] == method && v["route"] == route)
        .map(|v| v["status"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_page_on_an_allowed_origin_gets_its_code_in_chromium_and_another_origin_is_refused() {
    let (allowed, other) = (free_port(), free_port());
    let origin = format!("http://127.0.0.1:{allowed}");
    // Registered-states mode without an API token: a page registers with a hash, no token.
    let relay = Relay::start_env(
        &["--require-registered-state"],
        &[("OAUTH_RELAY_CORS_ORIGINS", &origin)],
    );
    let state = "cors-state-5f0b2c";
    // The provider's redirect back to the relay, as the person's browser follows it.
    let signin = relay.url(&format!("/callback?code=the-code&state={state}"));
    let input = serde_json::json!({
        "relay": relay.url(""),
        "allowed_port": allowed,
        "other_port": other,
        "state": state,
        "signin_url": signin,
    });
    let out = Command::new("node")
        .arg("cors.mjs")
        .arg(input.to_string())
        .current_dir(oidc::harness_dir())
        .env_remove("NODE_OPTIONS")
        .output()
        .expect("node is not installed: install Node.js 20.12 or later and npm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "cors.mjs printed no result ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && result.get("error").is_none(),
        "the browser failed: {}\nrelay log:\n{}",
        result["error"],
        relay.logs().join("\n")
    );
    // The allowed page registered, and got the code once the person was back.
    assert_eq!(result["registered"]["status"], 201, "{result}");
    assert_eq!(result["registered"]["body"]["state"], state);
    assert_eq!(result["signin_status"], 200);
    let retrieved = &result["retrieved"];
    assert_eq!(retrieved["status"], 200, "{result}");
    assert_eq!(retrieved["body"]["auth_code"], "the-code");
    // Both requests needed a preflight, and it passed: the browser asked, then sent.
    assert!(requests(&relay, "OPTIONS", "/api/states").contains(&204));
    assert!(requests(&relay, "OPTIONS", "/api/callback/{state}").contains(&204));
    // The other origin: the browser refused both, after a preflight that named no origin, so
    // neither request reached the relay.
    for attempt in ["register", "retrieve"] {
        assert_eq!(
            result["other"][attempt]["blocked"], true,
            "{attempt}: {result}"
        );
    }
    assert_eq!(requests(&relay, "POST", "/api/states"), [201]);
    assert_eq!(requests(&relay, "GET", "/api/callback/{state}"), [200]);
    assert_eq!(
        requests(&relay, "OPTIONS", "/api/states").len(),
        2,
        "one preflight per page"
    );
    // Nothing was registered for the other page's state.
    let res = relay.get(&format!("/callback?code=c&state={state}-other"));
    assert_eq!(res.status, 400, "{}", res.text());
}

#[test]
fn any_origin_by_default_with_the_python_servers_header() {
    let relay = Relay::start(&["--api-token", "cors-token-0123456789abcdef"]);
    let preflight = relay.request(
        "OPTIONS",
        "/api/callback/s1",
        &[
            PAGE,
            ("Access-Control-Request-Method", "GET"),
            (
                "Access-Control-Request-Headers",
                "authorization,x-retrieval-secret",
            ),
        ],
        b"",
    );
    assert_eq!(preflight.status, 204);
    assert!(preflight.body.is_empty());
    for (name, value) in [
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Allow-Methods", "GET"),
        (
            "Access-Control-Allow-Headers",
            "Authorization, X-Retrieval-Secret",
        ),
        ("Access-Control-Max-Age", "600"),
    ] {
        assert_eq!(preflight.header(name), Some(value), "{name}");
    }
    assert_eq!(preflight.header("Vary"), None);
    let res = relay.request(
        "OPTIONS",
        "/api/states",
        &[PAGE, ("Access-Control-Request-Method", "POST")],
        b"",
    );
    assert_eq!(
        (
            res.status,
            res.header("Access-Control-Allow-Methods"),
            res.header("Access-Control-Allow-Headers")
        ),
        (204, Some("POST"), Some("Authorization, Content-Type"))
    );
    // Every answer of these routes, errors included, may be read by any page.
    for (path, status) in [("/api/callback/s1", 401), ("/api/states", 405)] {
        let res = relay.request("GET", path, &[PAGE], b"");
        assert_eq!(res.status, status, "{path}");
        assert_eq!(
            res.header("Access-Control-Allow-Origin"),
            Some("*"),
            "{path}"
        );
    }
    // Routes not open to pages: OPTIONS is a method like another (405), and no CORS header.
    for path in ["/health", "/callback", "/sessions", "/token/x", "/metrics"] {
        let res = relay.request("OPTIONS", path, &[PAGE], b"");
        assert_eq!(res.status, 405, "{path}");
        assert!(res.header("Allow").is_some(), "{path}");
        assert_eq!(res.header("Access-Control-Allow-Origin"), None, "{path}");
    }
    assert_eq!(
        relay.get("/health").header("Access-Control-Allow-Origin"),
        None
    );
}

#[test]
fn a_list_of_origins_is_echoed_to_its_members_only() {
    let relay = Relay::start_env(
        &[],
        &[(
            "OAUTH_RELAY_CORS_ORIGINS",
            "https://App.Example.com/, http://localhost:3000",
        )],
    );
    relay.get("/callback?code=c&state=listed");
    for (origin, allowed) in [
        (Some("https://app.example.com"), true),
        (Some("http://localhost:3000"), true),
        (Some("https://app.example.com.evil.test"), false),
        (Some("http://app.example.com"), false),
        (Some("null"), false),
        (None, false),
    ] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let preflight = relay.request("OPTIONS", "/api/callback/listed", &headers, b"");
        let answer = relay.request("GET", "/api/callback/unknown", &headers, b"");
        for res in [&preflight, &answer] {
            assert_eq!(
                res.header("Access-Control-Allow-Origin"),
                origin.filter(|_| allowed),
                "{origin:?}"
            );
            assert_eq!(res.header("Vary"), Some("Origin"), "{origin:?}");
        }
        assert_eq!(
            preflight.header("Access-Control-Allow-Headers").is_some(),
            allowed,
            "{origin:?}"
        );
    }
    // A listed page reads the code.
    let res = relay.request(
        "GET",
        "/api/callback/listed",
        &[("Origin", "http://localhost:3000")],
        b"",
    );
    assert_eq!(res.json()["auth_code"], "c");
    assert_eq!(
        res.header("Access-Control-Allow-Origin"),
        Some("http://localhost:3000")
    );
}

#[test]
fn a_bad_origin_list_stops_start_up_naming_the_variable_and_the_flag() {
    let out = Command::new(support::BIN)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("OAUTH_RELAY_CORS_ORIGINS", "app.example.com")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("OAUTH_RELAY_CORS_ORIGINS") && err.contains("--cors-origins"),
        "{err}"
    );
}
