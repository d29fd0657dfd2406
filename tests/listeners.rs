//! Public and internal listeners (`OAUTH_RELAY_INTERNAL_ADDR`): every route of the one routing
//! table is served on the listener of its exposure and answers exactly like an unknown path on
//! the other (the probes, on both, on neither); both listeners share the store and the
//! shutdown. Without an internal address one listener serves everything.

use crate::support;

use oauth_relay::error::Face;
use oauth_relay::routes::{Exposure, Pattern, ROUTES};
use serde_json::json;
use std::net::SocketAddr;
use support::{http, path_of, HttpResponse, Relay};

const API_TOKEN: &str = "api-token-0123456789abcdef";
const BROKER_TOKEN: &str = "broker-token-0123456789abcdef";

/// A relay with broker mode on (so the broker's routes answer rather than 404) and an API
/// token; `split`: with an internal listener. Microsoft is never called by these tests.
fn relay(split: bool) -> Relay {
    let mut args = vec!["--api-token", API_TOKEN];
    if split {
        args.extend(["--internal-addr", "127.0.0.1:0"]);
    }
    Relay::start_env(
        &args,
        &[
            ("WK_PUBLIC_BASE_URL", "http://127.0.0.1:8000"),
            ("WK_M365_CLIENT_ID", "client-id"),
            ("WK_M365_BROKER_TOKEN", BROKER_TOKEN),
            ("WK_M365_LOGIN_BASE_URL", "http://127.0.0.1:9"),
            ("WK_M365_GRAPH_BASE_URL", "http://127.0.0.1:9"),
        ],
    )
}

/// A concrete path of a route.
fn sample(pattern: Pattern) -> String {
    match pattern {
        Pattern::Exact(p) => p.to_string(),
        Pattern::Prefix(p) => format!("{p}sample-id"),
        // The provider's name: the one this file's relay configures.
        Pattern::Around(prefix, suffix) => format!("{prefix}m365{suffix}"),
    }
}

/// What `addr` answers to a path nobody serves, read by the same kind of reader as `path`.
fn unknown_path_answer(addr: SocketAddr, path: &str, method: &str) -> HttpResponse {
    let unknown = match oauth_relay::routes::face(path) {
        Face::Api => "/api/no-such-route",
        Face::Page => "/no-such-route",
    };
    http(addr, method, unknown, &[], b"")
}

/// Status, type, length (what a HEAD answer has of the body) and body bytes.
fn same_answer(a: &HttpResponse, b: &HttpResponse) -> bool {
    ["content-type", "content-length"]
        .iter()
        .all(|h| a.header(h) == b.header(h))
        && a.status == b.status
        && a.body == b.body
}

#[test]
fn every_route_is_served_on_its_listener_and_unknown_on_the_other() {
    let relay = relay(true);
    let (public, internal) = (relay.addr, relay.internal());
    assert_ne!(public, internal);
    let listening = relay.wait_for_log("\"listening\"");
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    assert_eq!(v["addr"], public.to_string());
    assert_eq!(v["internal_addr"], internal.to_string());
    for route in ROUTES {
        let path = sample(route.pattern);
        let (serving, other) = match route.exposure {
            Exposure::Public => (vec![public], Some(internal)),
            Exposure::Internal => (vec![internal], Some(public)),
            Exposure::Both => (vec![public, internal], None),
        };
        for method in route.methods.iter().copied().chain(["DELETE"]) {
            let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
            for &serving in &serving {
                let served = http(serving, method, &path, &[], body);
                assert!(
                    !same_answer(&served, &unknown_path_answer(serving, &path, method)),
                    "{method} {path} is not served on {serving} ({:?}): {} {}",
                    route.exposure,
                    served.status,
                    served.text()
                );
            }
            let Some(other) = other else { continue };
            let hidden = http(other, method, &path, &[], body);
            let unknown = unknown_path_answer(other, &path, method);
            assert_eq!(hidden.status, 404, "{method} {path} on the other listener");
            assert!(
                same_answer(&hidden, &unknown),
                "{method} {path} on the other listener differs from an unknown path:\n{}\n{}",
                hidden.text(),
                unknown.text()
            );
        }
    }
    // Paths in nobody's table are 404 on both.
    for addr in [public, internal] {
        for path in ["/", "/api", "/api/", "/m365/", "/healthz"] {
            assert_eq!(http(addr, "GET", path, &[], b"").status, 404, "{path}");
        }
    }
}

#[test]
fn one_listener_serves_every_route_without_an_internal_address() {
    let relay = relay(false);
    assert_eq!(relay.internal_addr, None);
    let listening = relay.wait_for_log("\"listening\"");
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    assert!(v["internal_addr"].is_null(), "{listening}");
    for route in ROUTES {
        let path = sample(route.pattern);
        let method = route.methods[0];
        let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
        let served = http(relay.addr, method, &path, &[], body);
        assert!(
            !same_answer(&served, &unknown_path_answer(relay.addr, &path, method)),
            "{method} {path} is not served: {} {}",
            served.status,
            served.text()
        );
    }
}

#[test]
fn a_callback_stored_on_the_public_listener_is_retrieved_on_the_internal_one() {
    let relay = relay(true);
    let auth = format!("Bearer {API_TOKEN}");
    // Registration is internal too.
    let registered = relay.internal_request(
        "POST",
        "/api/states",
        &[("Authorization", &auth)],
        json!({ "state": "reg-1" }).to_string().as_bytes(),
    );
    assert_eq!(registered.status, 201, "{}", registered.text());
    // A long-poll parked on the internal listener is answered by a callback on the public one.
    let internal = relay.internal();
    let waiter = {
        let auth = auth.clone();
        std::thread::spawn(move || {
            http(
                internal,
                "GET",
                "/api/callback/s-split?wait=30",
                &[("Authorization", &auth)],
                b"",
            )
        })
    };
    support::eventually("the long-poll to park", || {
        let metrics = relay.internal_request("GET", "/metrics", &[], b"").text();
        metrics
            .lines()
            .any(|l| l.starts_with("oauth_relay_waiting_clients") && l.ends_with(" 1"))
            .then_some(())
    });
    let page = relay.get("/callback?code=the-code&state=s-split");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Authentication Successful"));
    let got = waiter.join().unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["auth_code"], "the-code");
    // A callback for the registered state, retrieved without waiting.
    assert_eq!(relay.get("/callback?code=c2&state=reg-1").status, 200);
    let got = relay.internal_request(
        "GET",
        "/api/callback/reg-1",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(got.json()["auth_code"], "c2");
    // The probes answer on both listeners, about the same store.
    assert_eq!(relay.get("/health").json()["active_callbacks"], 2);
    assert_eq!(relay.get("/ready").status, 200);
    let health = relay.internal_request("GET", "/health", &[], b"");
    assert_eq!(health.json()["active_callbacks"], 2);
    assert_eq!(
        relay.internal_request("GET", "/ready", &[], b"").status,
        200
    );
}

#[test]
fn a_login_link_created_internally_opens_publicly() {
    let relay = relay(true);
    let auth = format!("Bearer {BROKER_TOKEN}");
    let created = relay.internal_request(
        "POST",
        "/m365/sessions",
        &[("Authorization", &auth)],
        json!({ "expected_email": "ana.silva@contoso.example" })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let session = created.json();
    let link = path_of(session["login_url"].as_str().unwrap());
    let opened = relay.get(&link);
    assert_eq!(opened.status, 302, "{}", opened.text());
    assert_eq!(
        relay.internal_request("GET", &link, &[], b"").status,
        404,
        "login links are not served internally"
    );
    let handle = session["state"].as_str().unwrap();
    // /status is internal: without OAUTH_RELAY_INTERNAL_URL its URL is the path alone, to
    // resolve against the URL the session was created at (not the public one, where it is 404).
    assert_eq!(session["status_url"], format!("/status/{handle}"));
    let status = relay.internal_request(
        "GET",
        session["status_url"].as_str().unwrap(),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(status.json()["status"], "pending");
    assert_eq!(
        relay
            .request(
                "GET",
                &format!("/status/{handle}"),
                &[("Authorization", &auth)],
                b""
            )
            .status,
        404
    );
}

#[test]
fn sigterm_closes_both_listeners() {
    let mut relay = relay(true);
    let (public, internal) = (relay.addr, relay.internal());
    let auth = format!("Bearer {API_TOKEN}");
    // A long-poll on the internal listener is answered at shutdown, as on a single listener.
    let waiter = std::thread::spawn(move || {
        http(
            internal,
            "GET",
            "/api/callback/never?wait=60",
            &[("Authorization", &auth)],
            b"",
        )
    });
    support::eventually("the long-poll to park", || {
        let metrics = relay.internal_request("GET", "/metrics", &[], b"").text();
        metrics
            .lines()
            .any(|l| l.starts_with("oauth_relay_waiting_clients") && l.ends_with(" 1"))
            .then_some(())
    });
    relay.signal("TERM");
    assert_eq!(waiter.join().unwrap().status, 404);
    let status = relay.wait_exit();
    assert!(status.success(), "{status}");
    for addr in [public, internal] {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still accepts"
        );
    }
    relay.wait_for_log("shutdown_complete");
}

#[test]
fn status_urls_point_where_status_is_served() {
    let auth = format!("Bearer {BROKER_TOKEN}");
    let create = |relay: &Relay, internal: bool| {
        let body = json!({ "expected_email": "ana.silva@contoso.example" }).to_string();
        let headers = [("Authorization", auth.as_str())];
        let res = if internal {
            relay.internal_request("POST", "/m365/sessions", &headers, body.as_bytes())
        } else {
            relay.request("POST", "/m365/sessions", &headers, body.as_bytes())
        };
        assert_eq!(res.status, 200, "{}", res.text());
        res.json()
    };
    // One listener: on the public URL, as before.
    let session = create(&relay(false), false);
    let handle = session["state"].as_str().unwrap();
    assert_eq!(
        session["status_url"],
        format!("http://127.0.0.1:8000/status/{handle}")
    );
    // Split, with the internal listener's URL set: there.
    let relay = Relay::start_env(
        &[
            "--api-token",
            API_TOKEN,
            "--internal-addr",
            "127.0.0.1:0",
            "--internal-url",
            "http://oauth-relay-internal:8001/",
        ],
        &[
            ("WK_PUBLIC_BASE_URL", "http://127.0.0.1:8000"),
            ("WK_M365_CLIENT_ID", "client-id"),
            ("WK_M365_BROKER_TOKEN", BROKER_TOKEN),
            ("WK_M365_LOGIN_BASE_URL", "http://127.0.0.1:9"),
            ("WK_M365_GRAPH_BASE_URL", "http://127.0.0.1:9"),
        ],
    );
    let session = create(&relay, true);
    let handle = session["state"].as_str().unwrap();
    assert_eq!(
        session["status_url"],
        format!("http://oauth-relay-internal:8001/status/{handle}")
    );
}
