//! openapi.json cannot drift from the code: its paths, methods and exposures are the routing
//! table's, the real binary is driven through every documented operation and each answer is
//! checked against the document (status documented, media type, required headers, JSON body
//! valid against its schema), and the served /openapi.json is the file.

use crate::support;

use base64::Engine;
use oauth_relay::routes::{find, Exposure, ROUTES};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use support::broker::providers_env;
use support::fake_microsoft::{FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::openapi::{check, check_webhook, document, refs, resolve, validate};
use support::webhook_receiver::{test_secret, Receiver};
use support::{eventually, free_port, get_url, http, path_of, read_response, HttpResponse, Relay};

const API_TOKEN: &str = "api-token-0123456789abcdef";
const BROKER_TOKEN: &str = "broker-token-0123456789abcdef";
const EMAIL: &str = "ana.silva@contoso.example";
const CONNECTIONS_KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn exposure_name(e: Exposure) -> &'static str {
    match e {
        Exposure::Public => "public",
        Exposure::Internal => "internal",
        Exposure::Both => "both",
    }
}

#[test]
fn the_document_describes_exactly_the_routing_table() {
    let doc = document();
    let paths = doc["paths"].as_object().unwrap();
    for route in ROUTES {
        let item = paths
            .get(route.name)
            .unwrap_or_else(|| panic!("{} is not in openapi.json", route.name));
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| METHODS.contains(&k.as_str()))
            .cloned()
            .collect();
        // A route open to pages of other origins answers their preflights too.
        let preflight = route.cors.map(|_| "OPTIONS");
        let served: BTreeSet<String> = route
            .methods
            .iter()
            .copied()
            .chain(preflight)
            .map(|m| m.to_ascii_lowercase())
            .collect();
        assert_eq!(documented, served, "methods of {}", route.name);
        for method in &documented {
            assert_eq!(
                item[method]["x-exposure"],
                exposure_name(route.exposure),
                "x-exposure of {method} {}",
                route.name
            );
        }
    }
    for path in paths.keys() {
        assert!(
            ROUTES.iter().any(|r| r.name == path),
            "openapi.json documents {path}, which no route serves"
        );
    }
}

#[test]
fn the_document_is_openapi_3_1_and_every_reference_and_schema_holds() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        resolve(&doc, &json!({ "$ref": r }));
    }
    // Every schema compiles (a null instance: only compile errors matter here).
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if let Err(e) = validate(&doc, schema, &Value::Null) {
            assert!(!e.contains("does not compile"), "{name}: {e}");
        }
    }
    // Every operation has an id, a summary and its exposure; ids are unique.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["summary"].is_string(), "{method} {path}");
            assert!(
                ["public", "internal", "both"].contains(&op["x-exposure"].as_str().unwrap_or("")),
                "{method} {path}"
            );
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "{method} {path}: duplicate operationId"
            );
            // A path template's parameters are declared.
            for name in path
                .split('{')
                .skip(1)
                .map(|s| s.split('}').next().unwrap())
            {
                let declared = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .map(|p| resolve(&doc, p))
                        .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true)
                });
                assert!(declared, "{method} {path}: path parameter {name}");
            }
        }
    }
}

#[test]
fn the_documented_reasons_are_the_codes_the_broker_gives() {
    let doc = document();
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["Reason"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Every reason a sign-in can end with: the shared ones and each provider kind's own.
    let codes: BTreeSet<&str> = oauth_relay::provider::every_reason()
        .iter()
        .map(|r| r.code())
        .collect();
    assert_eq!(documented, codes);
}

#[test]
fn the_served_document_is_the_file() {
    let relay = Relay::start(&["--internal-addr", "127.0.0.1:0"]);
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap();
    let res = relay.internal_request("GET", "/openapi.json", &[], b"");
    assert_eq!(res.status, 200);
    assert_eq!(res.media_type(), "application/json");
    assert_eq!(res.header("Cache-Control"), Some("no-cache"));
    assert!(
        res.body == file,
        "the served /openapi.json differs from the file"
    );
    assert_eq!(oauth_relay::routes::OPENAPI.as_bytes(), &file[..]);
    // Programs' side only: on the public listener it is an unknown path.
    assert_eq!(relay.get("/openapi.json").status, 404);
}

/// A relay and what the test saw of it: each request goes to the listener of its route's
/// exposure and its answer is checked against the document.
struct Api<'a> {
    relay: &'a Relay,
    doc: &'a Value,
    seen: &'a Mutex<BTreeMap<(String, String), BTreeSet<u16>>>,
}

impl Api<'_> {
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let (template, addr) = self.route_of(path);
        self.sent(template, method, http(addr, method, path, headers, body))
    }

    /// The route's name and the listener of its exposure (the internal one for the probes,
    /// where the kubelet reaches them; tests/listeners.rs checks they answer on both).
    fn route_of(&self, path: &str) -> (&'static str, SocketAddr) {
        let bare = path.split('?').next().unwrap();
        let (route, _) = find(bare).unwrap_or_else(|| panic!("{path} is no route"));
        let addr = match route.exposure {
            Exposure::Public => self.relay.addr,
            Exposure::Internal | Exposure::Both => self.relay.internal(),
        };
        (route.name, addr)
    }

    /// Bytes as written (a request that never completes), to the listener of `path`'s route.
    fn raw(&self, method: &str, path: &str, bytes: &[u8]) -> HttpResponse {
        let (template, addr) = self.route_of(path);
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(bytes).unwrap();
        self.sent(template, method, read_response(&mut stream))
    }

    /// Checks an answer to `method` on the route named `template` and records its status.
    fn sent(&self, template: &str, method: &str, res: HttpResponse) -> HttpResponse {
        check(self.doc, template, method, &res);
        self.seen
            .lock()
            .unwrap()
            .entry((template.to_string(), method.to_ascii_lowercase()))
            .or_default()
            .insert(res.status);
        res
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.call("GET", path, &[], b"")
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.call("GET", path, headers, b"")
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
        self.call("POST", path, headers, body.to_string().as_bytes())
    }
}

/// A query parameter of a URL (the OAuth state in an authorize URL: URL-safe, not encoded).
fn query_param(url: &str, key: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap()
        .to_string()
}

fn hash_of(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// A broker (with the API token and an internal listener) wired to a fake Microsoft, as in
/// tests/broker.rs: the `m365` provider of the WK_M365_* variables and a second Microsoft
/// provider `corp` by name, both on the fake.
fn broker_relay(webhook: &str) -> (FakeMicrosoft, Relay) {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let cfg = FakeConfig {
        redirect_uris: vec![
            format!("{public}/m365/callback"),
            format!("{public}/login/corp/callback"),
        ],
        ..FakeConfig::default()
    };
    let fake = FakeMicrosoft::start_with(cfg.clone());
    let base = fake.base_url();
    let connections_file = support::scratch("openapi")
        .join("connections.redb")
        .display()
        .to_string();
    let mut vars: Vec<(String, String)> = [
        ("WK_PUBLIC_BASE_URL", public.as_str()),
        ("WK_M365_CLIENT_ID", &cfg.client_id),
        ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID),
        ("WK_M365_BROKER_TOKEN", BROKER_TOKEN),
        ("WK_M365_LOGIN_BASE_URL", &base),
        ("WK_M365_GRAPH_BASE_URL", &base),
        ("OAUTH_RELAY_RETURN_URL_ORIGINS", "https://chat.example.com"),
        ("OAUTH_RELAY_WEBHOOK_URL", webhook),
        ("OAUTH_RELAY_WEBHOOK_SECRET", &test_secret()),
        // Kept connections, in a file of their own.
        ("OAUTH_RELAY_ENCRYPTION_KEY", CONNECTIONS_KEY),
        ("OAUTH_RELAY_CONNECTIONS_FILE", &connections_file),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut corp = vec![
        ("KIND", "microsoft".to_string()),
        ("CLIENT_ID", cfg.client_id.clone()),
        ("TENANT", DEFAULT_TENANT_ID.into()),
        ("LOGIN_URL", base.clone()),
        ("API_URL", base.clone()),
    ];
    if let Some(secret) = &cfg.client_secret {
        vars.push(("WK_M365_CLIENT_SECRET".into(), secret.clone()));
        corp.push(("CLIENT_SECRET", secret.clone()));
    }
    vars.extend(providers_env(&[("corp", corp)]));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let port = port.to_string();
    let relay = Relay::start_env(
        &[
            "--port",
            &port,
            "--api-token",
            API_TOKEN,
            "--internal-addr",
            "127.0.0.1:0",
        ],
        &vars,
    );
    (fake, relay)
}

fn relay_flows(api: &Api) {
    let bearer = format!("Bearer {API_TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    // A callback lands, is retrieved once, then gone.
    assert_eq!(api.get("/callback?code=c1&state=s1").status, 200);
    assert_eq!(api.get("/callback?code=c1&state=s1").status, 200);
    assert_eq!(api.get("/callback?code=c1").status, 400);
    // Kept parameters, and their bound.
    let iss = "/callback?code=ci&state=si&iss=https%3A%2F%2Fas.example&session_state=x";
    assert_eq!(api.get(iss).status, 200);
    let over = format!("/callback?code=c&state=so&iss={}", "a".repeat(4097));
    assert_eq!(api.get(&over).status, 400);
    // Two different callbacks: in conflict, neither handed out.
    assert_eq!(api.get("/callback?code=c1&state=sc").status, 200);
    assert_eq!(api.get("/callback?code=other&state=sc").status, 409);
    assert_eq!(
        api.get("/callback?error=access_denied&state=s0").status,
        200
    );
    assert_eq!(api.get("/api/callback/s1").status, 401);
    assert_eq!(api.get_with("/api/callback/s1", &auth).status, 200);
    assert_eq!(api.get_with("/api/callback/s1", &auth).status, 410);
    assert_eq!(api.get("/callback?code=other&state=s1").status, 409);
    assert_eq!(
        api.get_with("/api/callback/si", &auth).json()["iss"],
        "https://as.example"
    );
    assert_eq!(api.get_with("/api/callback/sc", &auth).status, 409);
    assert_eq!(api.get_with("/api/callback/s0", &auth).status, 200);
    assert_eq!(api.get_with("/api/callback/unknown", &auth).status, 404);
    assert_eq!(api.get_with("/api/callback/s1?wait=abc", &auth).status, 400);
    assert_eq!(
        api.get_with("/api/callback/unknown?wait=1", &auth).status,
        404
    );
    // A long-poll answered by the callback it waits for.
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| api.get_with("/api/callback/s2?wait=60", &auth));
        eventually("the long-poll to park", || {
            let metrics = api.get("/metrics").text();
            metrics
                .contains("\noauth_relay_waiting_clients 1\n")
                .then_some(())
        });
        assert_eq!(api.get("/callback?code=c2&state=s2").status, 200);
        let res = waiting.join().unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.json()["auth_code"], "c2");
    });
    // Registration, with and without a retrieval hash.
    let json_type = ("Content-Type", "application/json");
    let with_token = [auth[0], json_type];
    let s3 = json!({ "state": "s3", "ttl_secs": 60 });
    assert_eq!(api.post("/api/states", &with_token, &s3).status, 201);
    assert_eq!(api.post("/api/states", &with_token, &s3).status, 409);
    assert_eq!(api.post("/api/states", &[json_type], &s3).status, 401);
    // Its owner (the token, here) is told "not yet", and "expired" once it is.
    assert_eq!(api.get_with("/api/callback/s3?wait=0", &auth).status, 202);
    let short = json!({ "state": "s6", "ttl_secs": 1 });
    assert_eq!(api.post("/api/states", &with_token, &short).status, 201);
    eventually("the registration to expire", || {
        (api.get_with("/api/callback/s6", &auth).status == 410).then_some(())
    });
    assert_eq!(api.get("/callback?code=late&state=s6").status, 410);
    assert_eq!(
        api.post("/api/states", &with_token, &json!({ "state": "" }))
            .status,
        400
    );
    assert_eq!(
        api.post(
            "/api/states",
            &with_token,
            &json!({ "state": "s5", "retrieval_hash": "short" })
        )
        .status,
        400
    );
    let big = json!({ "state": "x".repeat(5000) });
    assert_eq!(api.post("/api/states", &with_token, &big).status, 413);
    let secret = "a-retrieval-secret-only-the-client-holds";
    let s4 = json!({ "state": "s4", "retrieval_hash": hash_of(secret) });
    assert_eq!(api.post("/api/states", &with_token, &s4).status, 201);
    assert_eq!(api.get("/callback?code=c4&state=s4").status, 200);
    assert_eq!(api.get_with("/api/callback/s4", &auth).status, 404);
    // The secret alone is no way past the token; with it, the secret opens its state.
    let holder = [auth[0], ("X-Retrieval-Secret", secret)];
    assert_eq!(
        api.get_with("/api/callback/s4", &[("X-Retrieval-Secret", secret)])
            .status,
        401
    );
    let res = api.get_with("/api/callback/s4", &holder);
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["auth_code"], "c4");
    // Preflights of pages on other origins (any, by default).
    let page = [
        ("Origin", "https://app.example.com"),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "x-retrieval-secret"),
    ];
    let res = api.call("OPTIONS", "/api/callback/s4", &page, b"");
    assert_eq!(res.status, 204);
    assert_eq!(res.header("Access-Control-Allow-Origin"), Some("*"));
    let res = api.call("OPTIONS", "/api/states", &page, b"");
    assert_eq!(
        res.header("Access-Control-Allow-Headers"),
        Some("Authorization, Content-Type")
    );
    // Probes, metrics, this document.
    assert_eq!(api.get("/health").status, 200);
    assert_eq!(api.get("/ready").status, 200);
    assert_eq!(api.get("/metrics").status, 200);
    assert_eq!(api.get("/openapi.json").status, 200);
    // HTTP-layer answers any route can give.
    let long = format!("/api/callback/{}", "a".repeat(9000));
    assert_eq!(api.get_with(&long, &auth).status, 414);
    let many: Vec<(String, String)> = (0..80).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(api.get_with("/health", &many).status, 431);
}

fn broker_flows(api: &Api) {
    let bearer = format!("Bearer {BROKER_TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let create = [auth[0], ("Content-Type", "application/json")];
    let body = json!({ "expected_email": EMAIL });
    assert_eq!(api.post("/m365/sessions", &[], &body).status, 401);
    let bad = json!({ "expected_email": "nobody" });
    assert_eq!(api.post("/m365/sessions", &create, &bad).status, 400);
    let write = json!({ "expected_email": EMAIL, "scopes": ["Mail.Send"] });
    assert_eq!(api.post("/m365/sessions", &create, &write).status, 400);
    let res = api.post("/m365/sessions", &create, &body);
    assert_eq!(res.status, 200);
    let session = res.json();
    let handle = session["state"].as_str().unwrap();
    let status = format!("/status/{handle}");
    let token = format!("/token/{handle}");
    assert_eq!(api.get_with(&status, &auth).json()["status"], "pending");
    assert_eq!(api.get(&status).status, 401);
    assert_eq!(api.get_with("/status/unknown", &auth).status, 404);
    assert_eq!(api.get_with(&token, &auth).status, 202);
    assert_eq!(api.get_with(&format!("{token}?wait=1"), &auth).status, 202);
    assert_eq!(api.get_with(&format!("{token}?wait=x"), &auth).status, 400);
    assert_eq!(api.get(&token).status, 401);
    assert_eq!(api.get_with("/token/unknown", &auth).status, 404);
    // The link, as a preview bot and as a browser, then Microsoft and back.
    let start = path_of(session["login_url"].as_str().unwrap());
    assert_eq!(api.call("HEAD", &start, &[], b"").status, 302);
    let res = api.get_with(&start, &[("Accept-Language", "pt-BR")]);
    assert_eq!(res.status, 302);
    let authorize = get_url(res.header("Location").unwrap());
    assert_eq!(authorize.status, 302, "{}", authorize.text());
    let callback = path_of(authorize.header("Location").unwrap());
    assert_eq!(api.get(&callback).status, 200);
    assert_eq!(
        api.get(&callback).status,
        200,
        "a reload: already connected"
    );
    assert_eq!(api.get_with(&status, &auth).json()["status"], "ready");
    let tokens = api.get_with(&token, &auth);
    assert_eq!(tokens.status, 200);
    assert_eq!(tokens.json()["email"], EMAIL);
    assert_eq!(api.get_with(&token, &auth).status, 410);
    assert_eq!(api.get(&start).status, 200, "already connected");
    assert_eq!(api.get("/m365/start/unknown").status, 404);
    // What the deployment is (oauth-relay check-deployment).
    assert_eq!(api.get("/deployment").status, 401);
    let deployment = api.get_with("/deployment", &auth);
    assert_eq!(deployment.status, 200);
    assert_eq!(deployment.json()["providers"][0]["name"], "m365");
    assert_eq!(api.get("/m365/callback").status, 404);
    assert_eq!(api.get("/m365/callback?state=unknown&code=c").status, 404);
    // A person who cancels: the session fails, the caller learns why.
    let session = api.post("/m365/sessions", &create, &body).json();
    let handle = session["state"].as_str().unwrap();
    let start = path_of(session["login_url"].as_str().unwrap());
    let location = api.get(&start).header("Location").unwrap().to_string();
    let oauth_state = query_param(&location, "state");
    let cancelled = format!("/m365/callback?state={oauth_state}&error=access_denied");
    // From another browser (not the link's binding cookie): 403, and nothing is taken.
    let elsewhere = [("Cookie", "__Host-oauth-relay-000000000000=elsewhere")];
    assert_eq!(api.get_with(&cancelled, &elsewhere).status, 403);
    assert_eq!(api.get(&cancelled).status, 200);
    assert_eq!(api.get(&cancelled).status, 409, "the state is used up");
    let failed = api.get_with(&format!("/status/{handle}"), &auth).json();
    assert_eq!(
        (failed["status"].as_str(), failed["reason"].as_str()),
        (Some("failed"), Some("access_denied"))
    );
    assert_eq!(api.get_with(&format!("/token/{handle}"), &auth).status, 409);
    assert_eq!(api.get(&start).status, 409, "the link's sign-in failed");
    // The provider answers with an error of its own: 502.
    let session = api.post("/m365/sessions", &create, &body).json();
    let start = path_of(session["login_url"].as_str().unwrap());
    let location = api.get(&start).header("Location").unwrap().to_string();
    let oauth_state = query_param(&location, "state");
    let broken = format!("/m365/callback?state={oauth_state}&error=server_error");
    assert_eq!(api.get(&broken).status, 502);
    // Someone else signs in: 403, and the caller learns why.
    let other = json!({ "expected_email": "someone.else@contoso.example" });
    let session = api.post("/m365/sessions", &create, &other).json();
    assert_eq!(person_signs_in(api, &session), 403);
    let failed = api.get_with(
        &format!("/token/{}", session["state"].as_str().unwrap()),
        &auth,
    );
    assert_eq!(
        (failed.status, &failed.json()["reason"]),
        (409, &json!("email_mismatch"))
    );
}

/// The provider-agnostic endpoints: `POST /sessions`, `/login/{link}`, `/login/{provider}/callback`.
fn provider_flows(api: &Api) {
    let bearer = format!("Bearer {BROKER_TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let create = [auth[0], ("Content-Type", "application/json")];
    let back = "https://chat.example.com/c/42";
    let body = json!({ "provider": "corp", "expected_email": EMAIL, "return_url": back });
    assert_eq!(api.post("/sessions", &[], &body).status, 401);
    let elsewhere = json!({ "provider": "corp", "expected_email": EMAIL,
                            "return_url": "https://evil.example/" });
    assert_eq!(api.post("/sessions", &create, &elsewhere).status, 400);
    let unknown = json!({ "provider": "nope", "expected_email": EMAIL });
    assert_eq!(api.post("/sessions", &create, &unknown).status, 400);
    let nobody = json!({ "provider": "corp" });
    assert_eq!(api.post("/sessions", &create, &nobody).status, 400);
    let res = api.post("/sessions", &create, &body);
    assert_eq!(res.status, 200);
    let session = res.json();
    assert_eq!(session["provider"], "corp");
    assert_eq!(session["return_url"], back);
    let handle = session["state"].as_str().unwrap();
    let start = path_of(session["login_url"].as_str().unwrap());
    assert!(start.starts_with("/login/"), "{start}");
    assert_eq!(api.call("HEAD", &start, &[], b"").status, 302);
    let res = api.get(&start);
    assert_eq!(res.status, 302);
    let authorize = get_url(res.header("Location").unwrap());
    assert_eq!(authorize.status, 302, "{}", authorize.text());
    let callback = path_of(authorize.header("Location").unwrap());
    assert!(callback.starts_with("/login/corp/callback?"), "{callback}");
    assert_eq!(api.get(&callback).status, 200);
    assert_eq!(
        api.get(&callback).status,
        200,
        "a reload: already connected"
    );
    let status = api.get_with(&format!("/status/{handle}"), &auth).json();
    assert_eq!(status["status"], "ready");
    let tokens = api.get_with(&format!("/token/{handle}"), &auth);
    assert_eq!(tokens.status, 200);
    let tokens = tokens.json();
    assert_eq!(tokens["provider"], "corp");
    assert_eq!(tokens["tenant"], DEFAULT_TENANT_ID);
    assert_eq!(api.get(&start).status, 200, "already connected");
    assert_eq!(api.get("/login/unknown-link").status, 404);
    assert_eq!(api.get("/login/corp/callback").status, 404);
    assert_eq!(api.get("/login/corp/callback?state=x&code=y").status, 404);
    assert_eq!(api.get("/login/nope/callback?state=x&code=y").status, 404);
}

/// The person opens `session`'s login link, signs in at the fake provider and comes back: the
/// status of the page the callback answers.
fn person_signs_in(api: &Api, session: &Value) -> u16 {
    let start = path_of(session["login_url"].as_str().unwrap());
    let authorize = get_url(api.get(&start).header("Location").unwrap());
    api.get(&path_of(authorize.header("Location").unwrap()))
        .status
}

/// A sealed hand-off: a session created with `seal_to`, the key echoed, a key the broker cannot
/// use refused, and the tokens answered only as `{"sealed": JWE}`, whose plaintext is the
/// document's SealedClaims.
fn sealed_flows(api: &Api) {
    use oauth_relay::seal::{open, Curve, PrivateKey};
    let bearer = format!("Bearer {BROKER_TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let create = [auth[0], ("Content-Type", "application/json")];
    let key = PrivateKey::generate(Curve::X25519);
    let rsa = json!({ "provider": "corp", "expected_email": EMAIL,
                      "seal_to": { "kty": "RSA", "n": "AQAB", "e": "AQAB" } });
    assert_eq!(api.post("/sessions", &create, &rsa).status, 400);
    let body = json!({ "provider": "corp", "expected_email": EMAIL,
                       "seal_to": key.public().to_jwk() });
    let res = api.post("/sessions", &create, &body);
    assert_eq!(res.status, 200);
    let session = res.json();
    assert_eq!(session["seal_to"], key.public().to_jwk());
    let handle = session["state"].as_str().unwrap();
    assert_eq!(person_signs_in(api, &session), 200);
    let sealed = api.get_with(&format!("/token/{handle}"), &auth);
    assert_eq!(sealed.status, 200);
    let claims = open(&key, sealed.json()["sealed"].as_str().unwrap()).unwrap();
    assert_eq!(claims["aud"], handle);
    validate(
        api.doc,
        &json!({ "$ref": "#/components/schemas/SealedClaims" }),
        &claims,
    )
    .unwrap();
    assert_eq!(api.get_with(&format!("/token/{handle}"), &auth).status, 410);
}

/// Kept connections: a sign-in kept as a connection, its token on demand (clear and sealed),
/// its status, the listing, a dead grant and a new link for it, and deletion.
fn connection_flows(api: &Api, fake: &FakeMicrosoft) {
    use oauth_relay::seal::{open, Curve, PrivateKey};
    let bearer = format!("Bearer {BROKER_TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let create = [auth[0], ("Content-Type", "application/json")];
    let body = json!({ "provider": "corp", "expected_email": EMAIL, "keep": true });
    let session = api.post("/sessions", &create, &body).json();
    assert_eq!(session["keep"], true);
    let handle = session["state"].as_str().unwrap();
    assert_eq!(person_signs_in(api, &session), 200);
    let handoff = api.get_with(&format!("/token/{handle}"), &auth).json();
    let id = handoff["connection"]["id"].as_str().unwrap().to_string();
    let credential = format!(
        "Bearer {}",
        handoff["connection"]["credential"].as_str().unwrap()
    );
    let owner = [("Authorization", credential.as_str())];
    let owner_json = [owner[0], ("Content-Type", "application/json")];
    let token = format!("/connections/{id}/token");
    // The token: to its credential alone.
    assert_eq!(api.call("POST", &token, &[], b"").status, 401);
    let wrong = [("Authorization", "Bearer ckey_wrong")];
    assert_eq!(api.call("POST", &token, &wrong, b"").status, 404);
    assert_eq!(api.call("POST", &token, &auth, b"").status, 403);
    assert_eq!(
        api.post(&token, &owner_json, &json!({ "min_ttl": "x" }))
            .status,
        400
    );
    let res = api.call("POST", &token, &owner, b"");
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["access_token"], handoff["access_token"]);
    let key = PrivateKey::generate(Curve::P256);
    let res = api.post(
        &token,
        &owner_json,
        &json!({ "seal_to": key.public().to_jwk() }),
    );
    assert_eq!(res.status, 200);
    let claims = open(&key, res.json()["sealed"].as_str().unwrap()).unwrap();
    assert_eq!(claims["aud"], id);
    validate(
        api.doc,
        &json!({ "$ref": "#/components/schemas/AccessTokenClaims" }),
        &claims,
    )
    .unwrap();
    // Its status, and the listing.
    let status = format!("/connections/{id}");
    assert_eq!(api.get(&status).status, 401);
    assert_eq!(api.get_with(&status, &wrong).status, 404);
    assert_eq!(api.get_with(&status, &owner).json()["status"], "active");
    assert_eq!(api.get_with(&status, &auth).status, 200);
    assert_eq!(api.get("/connections").status, 401);
    let listed = api.get_with("/connections?provider=corp", &auth).json();
    assert_eq!(listed["connections"][0]["id"], id);
    // A dead grant: 409, and a new link.
    fake.revoke_grants();
    let res = api.post(&token, &owner_json, &json!({ "min_ttl": 86400 }));
    assert_eq!(res.status, 409, "{}", res.text());
    assert_eq!(res.json()["status"], "needs_reauth");
    let reauthorize = format!("/connections/{id}/reauthorize");
    assert_eq!(
        api.post(&reauthorize, &owner_json, &json!({ "nope": 1 }))
            .status,
        400
    );
    assert_eq!(api.call("POST", &reauthorize, &wrong, b"").status, 404);
    assert_eq!(api.call("POST", &reauthorize, &[], b"").status, 401);
    let link = api.call("POST", &reauthorize, &owner, b"");
    assert_eq!(link.status, 200);
    let session = link.json();
    assert_eq!(session["connection"], id);
    assert_eq!(person_signs_in(api, &session), 200);
    let revived = api.get_with(
        &format!("/token/{}", session["state"].as_str().unwrap()),
        &auth,
    );
    assert_eq!(revived.json()["connection"]["credential"], Value::Null);
    assert_eq!(api.call("POST", &token, &owner, b"").status, 200);
    // Deleted (Microsoft revokes nothing), then gone.
    let res = api.call("DELETE", &status, &owner, b"");
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["revocation"], "not_supported");
    assert_eq!(api.call("DELETE", &status, &owner, b"").status, 404);
    assert_eq!(api.call("DELETE", &status, &[], b"").status, 401);
    assert_eq!(api.call("POST", &token, &owner, b"").status, 404);
}

/// No API token, no broker: what is off answers as documented.
fn disabled_flows(api: &Api) {
    // Without a token, registering needs a retrieval hash (and nothing else).
    let body = json!({ "state": "s1" });
    assert_eq!(api.post("/api/states", &[], &body).status, 400);
    let body = json!({ "state": "s1", "retrieval_hash": hash_of("secret") });
    assert_eq!(api.post("/api/states", &[], &body).status, 201);
    assert_eq!(api.get("/callback?code=c&state=s1").status, 200);
    let holder = [("X-Retrieval-Secret", "secret")];
    assert_eq!(api.get_with("/api/callback/s1", &holder).status, 200);
    let session = json!({ "expected_email": EMAIL });
    assert_eq!(api.post("/m365/sessions", &[], &session).status, 404);
    let session = json!({ "provider": "corp", "expected_email": EMAIL });
    assert_eq!(api.post("/sessions", &[], &session).status, 404);
    assert_eq!(api.get("/login/x").status, 404);
    assert_eq!(api.get("/login/corp/callback?state=x").status, 404);
    assert_eq!(api.get("/m365/start/x").status, 404);
    assert_eq!(api.get("/m365/callback?state=x").status, 404);
    assert_eq!(api.get("/status/x").status, 404);
    assert_eq!(api.get("/token/x").status, 404);
    assert_eq!(api.get("/deployment").status, 404);
    assert_eq!(api.get("/connections").status, 404);
    assert_eq!(api.get("/connections/conn_x").status, 404);
    assert_eq!(
        api.call("POST", "/connections/conn_x/token", &[], b"")
            .status,
        404
    );
    // Without a token, retrieval is open.
    assert_eq!(api.get("/callback?code=c&state=open").status, 200);
    assert_eq!(api.get("/api/callback/open").status, 200);
    // Caps and bounds (this relay holds at most one callback and waits 1 s for a request).
    assert_eq!(api.get("/callback?code=c&state=second").status, 200);
    assert_eq!(api.get("/callback?code=c&state=third").status, 503);
    let partial = b"POST /api/states HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}";
    assert_eq!(api.raw("POST", "/api/states", partial).status, 408);
    // Past this client's share of long-polls (one): 429.
    let mut held = TcpStream::connect(api.relay.internal()).unwrap();
    held.write_all(b"GET /api/callback/held?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    eventually("the long-poll to park", || {
        let metrics = http(api.relay.internal(), "GET", "/metrics", &[], b"").text();
        metrics
            .contains("oauth_relay_waiting_clients 1")
            .then_some(())
    });
    assert_eq!(api.get("/api/callback/more?wait=30").status, 429);
    drop(held);
}

/// A client's share of pending entries (one, here) used up: 429 with Retry-After, a page for
/// the callback, JSON for a self-registration.
fn share_flows(api: &Api) {
    assert_eq!(api.get("/callback?code=c&state=mine").status, 200);
    assert_eq!(api.get("/callback?code=c&state=more").status, 429);
    let body = json!({ "state": "reg", "retrieval_hash": hash_of("secret") });
    assert_eq!(api.post("/api/states", &[], &body).status, 429);
}

#[test]
fn every_documented_operation_answers_as_documented() {
    let doc = document();
    let seen = Mutex::new(BTreeMap::new());
    let receiver = Receiver::start(&test_secret());
    let (fake, relay) = broker_relay(&receiver.url());
    let api = Api {
        relay: &relay,
        doc: &doc,
        seen: &seen,
    };
    relay_flows(&api);
    broker_flows(&api);
    provider_flows(&api);
    sealed_flows(&api);
    connection_flows(&api, &fake);
    let plain = Relay::start(&[
        "--internal-addr",
        "127.0.0.1:0",
        "--max-pending",
        "1",
        "--max-waiters-per-client",
        "1",
        "--read-timeout-secs",
        "1",
    ]);
    disabled_flows(&Api {
        relay: &plain,
        doc: &doc,
        seen: &seen,
    });
    let shared = Relay::start(&[
        "--internal-addr",
        "127.0.0.1:0",
        "--max-pending-per-client",
        "1",
    ]);
    share_flows(&Api {
        relay: &shared,
        doc: &doc,
        seen: &seen,
    });
    // The completion events those flows produced, as the webhook endpoint received them.
    let kinds = [
        "relay.callback_received",
        "broker.sign_in_succeeded",
        "broker.sign_in_failed",
        "connection.created",
        "connection.needs_reauth",
        "connection.revived",
        "connection.deleted",
    ];
    let events = eventually("an event of each type", || {
        let events = receiver.accepted();
        kinds
            .iter()
            .all(|k| events.iter().any(|e| e.json()["type"] == *k))
            .then_some(events)
    });
    for event in &events {
        let webhook = if event.json()["type"]
            .as_str()
            .unwrap()
            .starts_with("connection.")
        {
            "connectionEvent"
        } else {
            "completionEvent"
        };
        check_webhook(&doc, webhook, &event.headers, &event.body);
    }
    let seen = seen.into_inner().unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let key = (path.clone(), method.clone());
            let statuses = seen
                .get(&key)
                .unwrap_or_else(|| panic!("{method} {path} was never exercised"));
            // Not a failure: statuses the flows here do not reach (caps, provider failures).
            let unseen: Vec<&String> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|s| !statuses.contains(&s.parse().unwrap()))
                .collect();
            eprintln!(
                "{method} {path}: seen {statuses:?}, documented but not exercised {unseen:?}"
            );
        }
    }
}
