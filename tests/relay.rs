//! The relay's behaviour beyond parity: the Python server's holes closed (docs/api.md,
//! "Differences"), bounds, the optional API token, registered states, and what reaches the log.

use crate::support;

use support::{eventually, Relay};

const TOKEN: &str = "test-token-0123456789abcdef";

#[test]
fn reflected_values_are_escaped() {
    let relay = Relay::start(&[]);
    let res = relay.get(
        "/callback?state=x1&error=%3Cb%3Eno%3C%2Fb%3E&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E%22%27",
    );
    assert_eq!(res.status, 200);
    let page = res.text();
    assert!(page.contains("Authentication Failed"));
    assert!(
        !page.contains("<script>") && !page.contains("<b>"),
        "raw markup reflected: {page}"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;"));
    assert!(page.contains("&lt;b&gt;no&lt;/b&gt;"));
    assert_eq!(
        res.header("Content-Security-Policy")
            .map(|v| v.contains("default-src 'none'")),
        Some(true)
    );
    assert_eq!(res.header("Referrer-Policy"), Some("no-referrer"));
    assert_eq!(res.header("Cache-Control"), Some("no-store"));
}

#[test]
fn a_second_different_callback_hands_out_neither_and_a_reload_shows_the_same_page() {
    let relay = Relay::start(&[]);
    assert_eq!(relay.get("/callback?code=real&state=s1").status, 200);
    // A reload of the same redirect: same page, nothing changes.
    let reload = relay.get("/callback?code=real&state=s1");
    assert_eq!(reload.status, 200);
    assert!(reload.text().contains("Authentication Successful"));
    // Someone else's code for the same state: nobody can tell which came from the person, so
    // the state is in conflict and neither code is handed out.
    let planted = relay.get("/callback?code=attacker&state=s1");
    assert_eq!(planted.status, 409);
    assert!(!planted.text().contains("Authentication Successful"));
    assert!(planted.text().contains("two different responses"));
    for _ in 0..2 {
        let got = relay.get("/api/callback/s1");
        assert_eq!(got.status, 409);
        assert_eq!(
            got.json(),
            serde_json::json!({ "status": "error",
                "message": "Two different callbacks arrived for this state, so neither is handed out: start a new sign-in" })
        );
    }
    // From then on every callback for it, a reload of either included, is told so.
    assert_eq!(relay.get("/callback?code=real&state=s1").status, 409);

    // After retrieval the first one stays the client's: a reload still shows its page, and
    // another code is refused as before.
    assert_eq!(relay.get("/callback?code=real&state=s2").status, 200);
    assert_eq!(relay.get("/api/callback/s2").json()["auth_code"], "real");
    assert_eq!(relay.get("/callback?code=real&state=s2").status, 200);
    let late = relay.get("/callback?code=attacker&state=s2");
    assert_eq!(late.status, 409);
    assert!(late.text().contains("already completed"));
    assert_eq!(relay.get("/api/callback/s2").status, 410);
}

#[test]
fn a_callback_without_state_is_refused_and_stores_nothing() {
    let relay = Relay::start(&[]);
    for path in ["/callback?code=c", "/callback?code=c&state=", "/callback"] {
        let res = relay.get(path);
        assert_eq!(res.status, 400, "{path}");
        assert_eq!(res.media_type(), "text/html");
    }
    assert_eq!(relay.active_callbacks(), 0);
}

#[test]
fn other_methods_get_405_with_allow() {
    let relay = Relay::start(&[]);
    for (method, path, allow) in [
        ("POST", "/callback?code=c&state=m", "GET"),
        ("PUT", "/health", "GET"),
        ("DELETE", "/api/callback/m", "GET"),
        ("HEAD", "/callback?code=c&state=m", "GET"),
        ("GET", "/api/states", "POST"),
    ] {
        let res = relay.request(method, path, &[], b"");
        assert_eq!(res.status, 405, "{method} {path}");
        assert_eq!(res.header("Allow"), Some(allow), "{method} {path}");
    }
    assert_eq!(
        relay.active_callbacks(),
        0,
        "a refused method stored something"
    );
}

#[test]
fn past_the_cap_callbacks_get_503_and_stored_ones_stay() {
    let relay = Relay::start(&["--max-pending", "3"]);
    for i in 0..3 {
        assert_eq!(
            relay
                .get(&format!("/callback?code=c{i}&state=cap{i}"))
                .status,
            200
        );
    }
    let over = relay.get("/callback?code=c9&state=cap9");
    assert_eq!(over.status, 503);
    assert_eq!(over.media_type(), "text/html");
    assert!(over.header("Retry-After").is_some());
    for i in 0..3 {
        assert_eq!(
            relay.get(&format!("/api/callback/cap{i}")).json()["auth_code"],
            format!("c{i}")
        );
    }
    // Retrieved entries no longer count against the cap.
    assert_eq!(relay.get("/callback?code=c9&state=cap9").status, 200);
}

#[test]
fn overlong_urls_and_bodies_are_refused_without_disturbing_others() {
    let relay = Relay::start(&["--max-url-bytes", "1024", "--api-token", TOKEN]);
    assert_eq!(relay.get("/callback?code=keep&state=other").status, 200);
    let long = format!("/callback?state=s&code={}", "a".repeat(2000));
    assert_eq!(relay.get(&long).status, 414);
    let long_api = format!("/api/callback/{}", "a".repeat(2000));
    let res = relay.get(&long_api);
    assert_eq!(
        (res.status, res.json()["message"].as_str()),
        (414, Some("Request URL too long"))
    );
    let big = vec![b'x'; 5000];
    let auth = format!("Bearer {TOKEN}");
    let res = relay.request("POST", "/api/states", &[("Authorization", &auth)], &big);
    assert_eq!(res.status, 413);
    // Malformed bits in other places: clear errors, nothing lost.
    assert_eq!(relay.get_auth("/api/callback/%FF%FE", TOKEN).status, 404);
    assert_eq!(
        relay.get_auth("/api/callback/x?wait=soon", TOKEN).status,
        400
    );
    assert_eq!(
        relay.get_auth("/api/callback/other", TOKEN).json()["auth_code"],
        "keep"
    );
}

#[test]
fn entries_expire_on_a_timer() {
    let relay = Relay::start(&["--ttl-secs", "1"]);
    assert_eq!(relay.get("/callback?code=c&state=old").status, 200);
    assert_eq!(relay.active_callbacks(), 1);
    eventually("the entry to be swept", || {
        (relay.active_callbacks() == 0).then_some(())
    });
    assert_eq!(relay.get("/api/callback/old").status, 404);
}

#[test]
fn the_api_token_guards_retrieval_only() {
    let relay = Relay::start_env(&[], &[("OAUTH_RELAY_API_TOKEN", TOKEN)]);
    assert_eq!(relay.get("/callback?code=c&state=t1").status, 200);
    assert_eq!(relay.get("/health").status, 200);
    for res in [
        relay.get("/api/callback/t1"),
        relay.get_auth("/api/callback/t1", "wrong-token-0123456789abcdef"),
        relay.request("GET", "/api/callback/t1", &[("Authorization", TOKEN)], b""),
    ] {
        assert_eq!(res.status, 401);
        assert_eq!(res.json()["message"], "Missing or invalid API token");
        assert!(res
            .header("WWW-Authenticate")
            .unwrap()
            .starts_with("Bearer"));
    }
    // Failed attempts did not use it up.
    assert_eq!(
        relay.get_auth("/api/callback/t1", TOKEN).json()["auth_code"],
        "c"
    );
}

#[test]
fn registered_states_mode_accepts_only_registered_states() {
    let relay = Relay::start(&["--require-registered-state", "--api-token", TOKEN]);
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    // A stranger's callback is refused and stores nothing.
    assert_eq!(relay.get("/callback?code=evil&state=r1").status, 400);
    assert_eq!(relay.active_callbacks(), 0);
    // Registration needs the token.
    assert_eq!(
        relay
            .request("POST", "/api/states", &[], br#"{"state":"r1"}"#)
            .status,
        401
    );
    let res = relay.request(
        "POST",
        "/api/states",
        &headers,
        br#"{"state":"r1","ttl_secs":60}"#,
    );
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.json()["state"], "r1");
    assert!(res.json()["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        relay
            .request("POST", "/api/states", &headers, br#"{"state":"r1"}"#)
            .status,
        409
    );
    for bad in [
        &b"not json"[..],
        br#"{"state":""}"#,
        br#"{"state":"r2","ttl_secs":-1}"#,
        br#"[]"#,
    ] {
        assert_eq!(
            relay.request("POST", "/api/states", &headers, bad).status,
            400
        );
    }
    assert_eq!(relay.get("/callback?code=good&state=r1").status, 200);
    assert_eq!(
        relay.get_auth("/api/callback/r1", TOKEN).json()["auth_code"],
        "good"
    );
}

#[test]
fn without_a_token_registration_needs_a_retrieval_hash() {
    let relay = Relay::start(&[]);
    let res = relay.request("POST", "/api/states", &[], br#"{"state":"x"}"#);
    assert_eq!(res.status, 400);
    let message = res.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("retrieval_hash") && message.contains("OAUTH_RELAY_API_TOKEN"),
        "{message}"
    );
    let hash = "K7gNU3sdo-OL0wNhqoVWhr3g6s1xYv72ol_pe_Unols";
    let res = relay.request(
        "POST",
        "/api/states",
        &[],
        format!(r#"{{"state":"x","retrieval_hash":"{hash}"}}"#).as_bytes(),
    );
    assert_eq!(res.status, 201, "{}", res.text());
}

#[test]
fn concurrent_retrievals_hand_the_code_out_once() {
    let relay = Relay::start(&["--workers", "8"]);
    for round in 0..20 {
        let state = format!("race{round}");
        assert_eq!(
            relay
                .get(&format!("/callback?code=c{round}&state={state}"))
                .status,
            200
        );
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|_| s.spawn(|| relay.get(&format!("/api/callback/{state}")).status))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 410).count(),
            11,
            "{statuses:?}"
        );
    }
}

#[test]
fn logs_are_json_and_never_hold_a_code_or_a_raw_state() {
    let relay = Relay::start(&[]);
    let code = "SECRET-CODE-abc123";
    let state = "RAW-STATE-xyz789";
    relay.get(&format!("/callback?code={code}&state={state}"));
    relay.get(&format!("/api/callback/{state}"));
    relay.get(&format!("/callback?code=other-{code}&state={state}"));
    relay.get(&format!("/callback?code=other-{code}&state={state}-c"));
    relay.get(&format!("/callback?code={code}&state={state}-c"));
    relay.get(&format!("/callback?state={state}-e&error=access_denied"));
    relay.wait_for_log("\"status\":409");
    let logs = relay.logs();
    for line in &logs {
        let v: serde_json::Value = serde_json::from_str(line).expect("every log line is JSON");
        assert!(v["ts"].is_string() && v["level"].is_string() && v["event"].is_string());
        assert!(!line.contains(code), "code leaked: {line}");
        assert!(!line.contains(state), "raw state leaked: {line}");
    }
    let stored = logs.iter().find(|l| l.contains("callback_stored")).unwrap();
    let v: serde_json::Value = serde_json::from_str(stored).unwrap();
    assert_eq!(v["state"].as_str().unwrap().len(), 12);
}

#[test]
fn invalid_settings_stop_start_up_with_a_message() {
    let out = std::process::Command::new(support::BIN)
        .args(["--ttl-secs", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OAUTH_RELAY_TTL_SECS"));
    let out = std::process::Command::new(support::BIN)
        .env("OAUTH_RELAY_INTERNAL_ADDR", "localhost")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OAUTH_RELAY_INTERNAL_ADDR"));
}

#[test]
fn inherited_variable_names_still_work() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cmd = std::process::Command::new(support::BIN);
    cmd.env("OAUTH_CALLBACK_HOST", "127.0.0.1")
        .env("OAUTH_CALLBACK_PORT", port.to_string())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let res = eventually("the relay on OAUTH_CALLBACK_PORT", || {
        std::net::TcpStream::connect(addr).ok()?;
        Some(support::http(addr, "GET", "/health", &[], b""))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(res.status, 200);
}
