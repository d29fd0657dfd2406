//! openapi.json and the server agree about what a client may send: what the document allows, the
//! server takes, and what the server refuses, the document does not allow (for what does not
//! depend on the configuration). Checked value by value here, then by schemathesis, a
//! third-party fuzzer of OpenAPI documents, over both listeners of the real binary.

use crate::support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use support::fake_microsoft::{FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::openapi::{document, resolve, validate};
use support::{free_port, http, parse_response, HttpResponse, Relay};

const TOKEN: &str = "contract-token-0123456789abcdef";

/// Split listeners, the API token, and the broker (`m365`) on a fake Microsoft; long-polls
/// capped at `max_wait` seconds. The API token and the broker token are the same, so one
/// `Authorization` header opens every internal route.
fn contract_relay(max_wait: &str) -> (FakeMicrosoft, Relay) {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let cfg = FakeConfig {
        redirect_uris: vec![format!("{public}/m365/callback")],
        ..FakeConfig::default()
    };
    let fake = FakeMicrosoft::start_with(cfg.clone());
    let base = fake.base_url();
    let mut env = vec![
        ("WK_PUBLIC_BASE_URL", public.clone()),
        ("WK_M365_CLIENT_ID", cfg.client_id.clone()),
        ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID.to_string()),
        ("WK_M365_BROKER_TOKEN", TOKEN.to_string()),
        ("WK_M365_LOGIN_BASE_URL", base.clone()),
        ("WK_M365_GRAPH_BASE_URL", base),
        (
            "OAUTH_RELAY_RETURN_URL_ORIGINS",
            "https://chat.example.com".into(),
        ),
    ];
    if let Some(secret) = &cfg.client_secret {
        env.push(("WK_M365_CLIENT_SECRET", secret.clone()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let port = port.to_string();
    let relay = Relay::start_env(
        &[
            "--port",
            &port,
            "--internal-addr",
            "127.0.0.1:0",
            "--api-token",
            TOKEN,
            "--max-wait-secs",
            max_wait,
        ],
        &env,
    );
    (fake, relay)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn post(relay: &Relay, path: &str, body: &str) -> HttpResponse {
    let auth = bearer();
    relay.internal_request(
        "POST",
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// The request body schema of `POST path`.
fn body_schema<'d>(doc: &'d Value, path: &str) -> &'d Value {
    resolve(
        doc,
        &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"],
    )
}

/// Raw bytes to `addr`, the answer read to the end (the server closes after these refusals).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

#[test]
fn a_query_string_does_not_turn_an_api_path_into_a_page() {
    let relay = Relay::start(&["--internal-addr", "127.0.0.1:0"]);
    let long = "q".repeat(9000);
    // (listener, path with a query, JSON expected)
    let cases = [
        (relay.addr, "/health?x=", true),
        (relay.addr, "/ready?x=1&", true),
        (relay.internal(), "/sessions?x=1&", true),
        (relay.internal(), "/api/states?x=", true),
        (relay.internal(), "/api/callback/s?x=", true),
        (relay.addr, "/callback?state=s&x=", false),
        (relay.addr, "/login/abc?x=", false),
    ];
    for (addr, path, json) in cases {
        let over_url = exchange(
            addr,
            format!("GET {path}{long} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        let over_body = exchange(
            addr,
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n").as_bytes(),
        );
        for (res, status) in [(over_url, 414), (over_body, 413)] {
            assert_eq!(res.status, status, "{path}: {}", res.text());
            let media = if json {
                "application/json"
            } else {
                "text/html"
            };
            assert_eq!(res.media_type(), media, "{status} for {path}");
        }
    }
    // And the same answer without the query: only the path decides.
    let res = exchange(
        relay.addr,
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(
        (res.status, res.json()["message"].as_str()),
        (413, Some("Request body too large"))
    );
}

#[test]
fn json_bodies_must_be_objects_of_known_keys() {
    let (_fake, relay) = contract_relay("1");
    let doc = document();
    // (path, a body with a typo, the key named, the keys listed)
    let cases = [
        (
            "/api/states",
            r#"{"state":"typo-1","ttl":300}"#,
            "ttl",
            "state, ttl_secs, retrieval_hash",
        ),
        (
            "/sessions",
            r#"{"provider":"m365","expected_email":"ana@contoso.example","scope":"User.Read"}"#,
            "scope",
            "provider, expected_email, expected_subject, scopes, force_consent, return_url, seal_to, keep",
        ),
        (
            "/m365/sessions",
            r#"{"expected_email":"ana@contoso.example","forceConsent":true}"#,
            "forceConsent",
            "provider, expected_email, expected_subject, scopes, force_consent, return_url, seal_to, keep",
        ),
    ];
    for (path, body, key, keys) in cases {
        let res = post(&relay, path, body);
        assert_eq!(res.status, 400, "{path} {body}: {}", res.text());
        assert_eq!(
            res.json()["message"],
            format!("Unknown key \"{key}\" in the body (the keys are: {keys})"),
            "{path}"
        );
        let parsed: Value = serde_json::from_str(body).unwrap();
        assert!(
            validate(&doc, body_schema(&doc, path), &parsed).is_err(),
            "openapi.json allows {body} on {path}"
        );
        // Without the typo the same body is taken.
        let mut fixed = parsed.clone();
        fixed.as_object_mut().unwrap().remove(key);
        let res = post(&relay, path, &fixed.to_string());
        assert!(res.status < 300, "{path} {fixed}: {}", res.text());
        assert!(validate(&doc, body_schema(&doc, path), &fixed).is_ok());
        // Anything but an object is refused as such.
        for not_an_object in [
            format!("[{fixed}]"),
            "\"text\"".into(),
            "null".into(),
            "{".into(),
        ] {
            let res = post(&relay, path, &not_an_object);
            assert_eq!(res.status, 400, "{path} {not_an_object}");
            assert_eq!(
                res.json()["message"],
                "Body must be a JSON object",
                "{path} {not_an_object}"
            );
        }
    }
    // A key too long to quote is not quoted (the answer stays small), and still refused.
    let long = format!(r#"{{"state":"typo-2","{}":1}}"#, "k".repeat(100));
    let res = post(&relay, "/api/states", &long);
    assert_eq!(res.status, 400);
    assert_eq!(
        res.json()["message"],
        "Unknown key in the body (the keys are: state, ttl_secs, retrieval_hash)"
    );
}

/// For each body: whether openapi.json allows it, and whether the server takes it, must agree.
/// `stricter` are bodies the server takes although the document does not allow them (it cannot
/// say everything the server forgives, such as white space around an e-mail address): a client
/// following the document is never refused, which is what matters.
fn agree(relay: &Relay, doc: &Value, path: &str, cases: &[Value], stricter: &[Value]) {
    let schema = body_schema(doc, path);
    for body in cases.iter().chain(stricter) {
        let allowed = validate(doc, schema, body);
        let res = post(relay, path, &body.to_string());
        assert!(
            matches!(res.status, 200 | 201 | 400),
            "{path} {body}: {}",
            res.text()
        );
        let (documented, taken) = if stricter.contains(body) {
            (false, true)
        } else {
            (res.status != 400, res.status != 400)
        };
        assert_eq!(
            (allowed.is_ok(), res.status != 400),
            (documented, taken),
            "{path} {body}: openapi.json says {allowed:?}, the server {} {}",
            res.status,
            res.text()
        );
    }
}

#[test]
fn what_the_document_allows_the_server_takes_and_the_reverse() {
    let (_fake, relay) = contract_relay("1");
    let doc = document();
    // Registration: a whole number of seconds however written or large, canonical hashes only.
    let mut states = vec![
        json!({ "state": "n-1", "ttl_secs": 300 }),
        json!({ "state": "n-2", "ttl_secs": 300.0 }),
        json!({ "state": "n-3", "ttl_secs": 1e30 }),
        json!({ "state": "n-4", "ttl_secs": 18446744073709551615u64 }),
        json!({ "state": "n-5", "ttl_secs": null, "retrieval_hash": null }),
        json!({ "state": "n-6", "ttl_secs": 0 }),
        json!({ "state": "n-7", "ttl_secs": 2.5 }),
        json!({ "state": "n-8", "ttl_secs": -1 }),
        json!({ "state": "n-9", "ttl_secs": "300" }),
        json!({ "state": "" }),
        json!({ "state": 7 }),
        json!({ "state": "a".repeat(1024) }),
        json!({ "state": "b".repeat(1025) }),
        json!({ "state": "é".repeat(256) }),
        json!({ "state": "é".repeat(513) }),
    ];
    // The hash's last character carries 2 bits of the digest and 4 zero bits: only 16 of the
    // 64 characters make a canonical encoding of 32 bytes.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (i, last) in alphabet.chars().enumerate() {
        let hash = format!("{}{last}", "A".repeat(42));
        states.push(json!({ "state": format!("h-{i}"), "retrieval_hash": hash }));
    }
    states.push(json!({ "state": "h-short", "retrieval_hash": "A".repeat(42) }));
    states.push(json!({ "state": "h-padded", "retrieval_hash": format!("{}A=", "A".repeat(42)) }));
    agree(&relay, &doc, "/api/states", &states, &[]);

    // Sessions: who signs in must be a string; blank or empty scopes are no scopes.
    let email = "ana.silva@contoso.example";
    let sessions = [
        json!({ "expected_email": email }),
        json!({ "expected_email": email, "provider": null }),
        json!({ "expected_email": email, "provider": "m365" }),
        json!({ "expected_email": "joão@empresa.com.br" }),
        json!({ "expected_email": null }),
        json!({ "expected_email": null, "expected_subject": "tid/oid" }),
        json!({ "expected_subject": "  tid/oid  " }),
        json!({ "expected_subject": "   " }),
        json!({ "expected_subject": "a\u{7}b" }),
        json!({ "expected_subject": "x".repeat(256) }),
        json!({ "expected_subject": "x".repeat(257) }),
        json!({ "expected_subject": "ç".repeat(64) }),
        json!({ "expected_subject": "\u{a0}" }),
        json!({ "expected_email": "nobody" }),
        json!({ "expected_email": "a@b" }),
        json!({ "expected_email": "a b@c.d" }),
        json!({ "expected_email": "\u{a0}@b.c" }),
        json!({ "expected_email": email, "scopes": "User.Read Mail.Read" }),
        json!({ "expected_email": email, "scopes": ["User.Read"] }),
        json!({ "expected_email": email, "scopes": [] }),
        json!({ "expected_email": email, "scopes": "" }),
        json!({ "expected_email": email, "scopes": " " }),
        json!({ "expected_email": email, "scopes": [1] }),
        json!({ "expected_email": email, "force_consent": "yes" }),
        json!({ "expected_email": email, "return_url": "https://chat.example.com/c/1" }),
        json!({ "expected_email": email, "provider": "other" }),
    ];
    let trimmed = [json!({ "expected_email": format!("  {email} ") })];
    agree(&relay, &doc, "/m365/sessions", &sessions, &trimmed);
    let named = |bodies: &[Value]| -> Vec<Value> {
        bodies
            .iter()
            .filter(|b| b.get("provider").is_none())
            .map(|b| {
                let mut b = b.clone();
                b["provider"] = json!("m365");
                b
            })
            .collect()
    };
    agree(
        &relay,
        &doc,
        "/sessions",
        &named(&sessions),
        &named(&trimmed),
    );

    // `wait`: any whole number is capped (here at 1 s), however many digits it has.
    let auth = bearer();
    for wait in [
        "0",
        "1",
        "18446744073709551616",
        "99999999999999999999999999",
    ] {
        let res = http(
            relay.internal(),
            "GET",
            &format!("/api/callback/nobody?wait={wait}"),
            &[("Authorization", auth.as_str())],
            b"",
        );
        assert_eq!(res.status, 404, "wait={wait}: {}", res.text());
    }
    for wait in ["-1", "1.5", "x", "%2B"] {
        let res = http(
            relay.internal(),
            "GET",
            &format!("/api/callback/nobody?wait={wait}"),
            &[("Authorization", auth.as_str())],
            b"",
        );
        assert_eq!(res.status, 400, "wait={wait}");
        let wait_schema = &doc["components"]["parameters"]["wait"]["schema"];
        let as_number: Option<Value> = serde_json::from_str(wait).ok();
        assert!(
            as_number.is_none_or(|n| validate(&doc, wait_schema, &n).is_err()),
            "openapi.json allows wait={wait}"
        );
    }
}

/// Runs schemathesis against the operations of one exposure, on the listener at `base`, with the
/// document served at `schema`. Returns how many requests it sent; panics on any failure.
fn schemathesis(schema: &str, base: &str, exposure: &str, work: &Path) -> usize {
    let report = work.join(format!("{exposure}.ndjson"));
    let out = Command::new(support::python::program("schemathesis"))
        .current_dir(work)
        .env("NO_COLOR", "1")
        .args([
            "run",
            schema,
            "--url",
            base,
            "--include-by",
            &format!("/x-exposure == {exposure}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "25",
            "--seed",
            "20261206",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
            "--header",
            &format!("Authorization: {}", bearer()),
            "--report",
            "ndjson",
            "--report-ndjson-path",
        ])
        .arg(&report)
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures on the {exposure} listener ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // What it sent, from its own report: every request of every scenario.
    let mut requests = 0;
    for line in std::fs::read_to_string(&report).unwrap().lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        if let Some(interactions) =
            event["ScenarioFinished"]["recorder"]["interactions"].as_object()
        {
            requests += interactions.len();
        }
    }
    eprintln!("schemathesis, {exposure} listener: {requests} requests; {stdout}");
    requests
}

#[test]
fn schemathesis_finds_nothing_on_either_listener() {
    // No long-poll waits: each would hold the run for the whole cap.
    let (_fake, relay) = contract_relay("0");
    let work =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    // The document is served on the internal listener only; each run tests its own half.
    let schema = relay.internal_url("/openapi.json");
    let public = schemathesis(&schema, &relay.url(""), "public", &work);
    let internal = schemathesis(&schema, &relay.internal_url(""), "internal", &work);
    let _ = std::fs::remove_dir_all(&work);
    // A run that sent next to nothing would prove nothing.
    assert!(public > 100 && internal > 300, "{public} + {internal}");
}
