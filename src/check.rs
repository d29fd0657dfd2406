//! `oauth-relay check-deployment`: the checklist a deployment is handed over with, as a command
//! run from outside against its public and internal URLs. It asks only what any caller could:
//! the probes, every route of the routing table on both URLs (the listener split), session
//! creation without and with the broker token, and for each provider a session whose login link
//! it opens without following the provider (the `302`'s `Location` says what the provider would
//! be sent). What only the service can know (whether it reaches each provider's discovery
//! document, keys or API; whether completion events are on) it asks the service, through
//! `GET /deployment` on the internal URL, and says so.
//!
//! One line per item with its mark, and a one-line fix under each failure; exit status 0 only
//! when every item passed. Nothing secret is printed: the broker token is read from a variable,
//! a file or stdin (never argv), and every line is scrubbed of it and of the sessions' handles,
//! link ids and OAuth states (a short hash stands in their place).

use crate::config::{server_url, CheckArgs};
use crate::error::Face;
use crate::http::Listener;
use crate::providers_config::{prefix_of, M365};
use crate::routes::{find, Exposure, Pattern, ROUTES};
use crate::secret::{short_hash, Secret};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

const LABEL: &str = "oauth-relay check-deployment";
/// Whom the check's sessions expect: nobody signs in with it (`.invalid` is reserved).
const PLACEHOLDER_EMAIL: &str = "check-deployment@example.invalid";
const PUBLIC_URL_VARS: &str = "WK_PUBLIC_BASE_URL (or OAUTH_RELAY_PUBLIC_URL)";

pub fn check_deployment(args: CheckArgs) -> ExitCode {
    let public = args
        .public_url
        .clone()
        .or_else(|| std::env::var("WK_PUBLIC_BASE_URL").ok())
        .filter(|v| !v.trim().is_empty());
    let urls = match (public, args.internal_url.as_deref()) {
        (None, _) => Err("missing --public-url (or the environment variable \
                          OAUTH_RELAY_PUBLIC_URL or WK_PUBLIC_BASE_URL)"
            .to_string()),
        (_, None) => Err("missing --internal-url (or the environment variable \
                          OAUTH_RELAY_INTERNAL_URL)"
            .to_string()),
        (Some(public), Some(internal)) => {
            let public = server_url(&public, "--public-url", "OAUTH_RELAY_PUBLIC_URL");
            let internal = server_url(internal, "--internal-url", "OAUTH_RELAY_INTERNAL_URL");
            public.and_then(|p| Ok((p, internal?)))
        }
    };
    let token = broker_token(&args);
    let ((public, internal), token) = match (urls, token) {
        (Ok(urls), Ok(token)) => (urls, token),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("{LABEL}: {message}");
            return ExitCode::from(1);
        }
    };
    let mut c = Checker {
        agent: crate::outbound::agent(Duration::from_secs(args.timeout_secs.max(1))),
        public,
        internal,
        ascii: args.ascii,
        secrets: token.iter().map(|t| t.expose().to_string()).collect(),
        counts: [0; 3],
        unknown: HashMap::new(),
        token_refused: false,
    };
    c.line(&format!("{LABEL} {}", env!("CARGO_PKG_VERSION")));
    c.line(&format!("  public URL:   {}", c.public));
    c.line(&format!("  internal URL: {}", c.internal));
    c.probes();
    c.split();
    let broker_on = c.sessions_refused();
    let description = c.described(token.as_ref(), broker_on);
    if let Some(d) = &description {
        c.service(d);
    }
    match &token {
        Some(token) => c.providers(&args.providers, description.as_ref(), token),
        None => c.skip(
            "providers' sessions and login links",
            "no broker token to create sessions with (see above)",
        ),
    }
    c.events(args.expect_events, description.as_ref());
    let [passed, failed, skipped] = c.counts;
    c.line(&format!(
        "{passed} passed, {failed} failed, {skipped} skipped"
    ));
    if failed == 0 && skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The broker token, from where the options say; `None` when none was given at all (the items
/// that need it then fail with how to give it).
fn broker_token(args: &CheckArgs) -> Result<Option<Secret>, String> {
    let token = if let Some(path) = &args.broker_token_file {
        std::fs::read_to_string(path)
            .map_err(|e| format!("--broker-token-file {}: {e}", path.display()))?
    } else if args.broker_token_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("--broker-token-stdin: {e}"))?;
        line
    } else if let Some(name) = &args.broker_token_env {
        std::env::var(name).map_err(|_| {
            format!("--broker-token-env: the environment variable {name} is not set (or not UTF-8)")
        })?
    } else {
        match ["OAUTH_RELAY_BROKER_TOKEN", "WK_M365_BROKER_TOKEN"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|t| !t.trim().is_empty()))
        {
            Some(token) => token,
            None => return Ok(None),
        }
    };
    let token = token.trim_end_matches(['\r', '\n']).trim();
    if token.is_empty() {
        return Err("the broker token given is empty".into());
    }
    Ok(Some(Secret::new(token)))
}

#[derive(Clone, Copy)]
enum Mark {
    Pass,
    Fail,
    Skip,
}

/// One HTTP answer, as far as the checks read it.
struct Answer {
    status: u16,
    content_type: String,
    location: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The error message of a JSON answer, or the status.
    fn message(&self) -> String {
        match self.json()["message"].as_str() {
            Some(m) => format!("HTTP {}: {m}", self.status),
            None => format!("HTTP {}", self.status),
        }
    }

    fn same_as(&self, other: &Answer) -> bool {
        (self.status, &self.content_type, &self.body)
            == (other.status, &other.content_type, &other.body)
    }
}

/// A provider as the check knows it: from the service's description, or only its name.
struct ProviderInfo {
    name: String,
    described: Option<Value>,
}

struct Checker {
    agent: ureq::Agent,
    public: String,
    internal: String,
    ascii: bool,
    /// Never printed: each is replaced by `<hash ...>` in every line.
    secrets: Vec<String>,
    /// Passed, failed, skipped.
    counts: [usize; 3],
    /// What each URL answers to a path nobody serves, by (base, face, method).
    unknown: HashMap<(String, bool, &'static str), Result<Answer, String>>,
    /// The service answered 401 to the broker token.
    token_refused: bool,
}

impl Checker {
    /// Prints a line, scrubbed.
    fn line(&self, text: &str) {
        println!("{}", scrub(text, &self.secrets));
    }

    fn item(&mut self, mark: Mark, title: &str, fix: Option<&str>) {
        let (symbol, n) = match (mark, self.ascii) {
            (Mark::Pass, false) => ("✓", 0),
            (Mark::Fail, false) => ("✗", 1),
            (Mark::Skip, false) => ("-", 2),
            (Mark::Pass, true) => ("PASS", 0),
            (Mark::Fail, true) => ("FAIL", 1),
            (Mark::Skip, true) => ("SKIP", 2),
        };
        self.counts[n] += 1;
        self.line(&format!("{symbol} {title}"));
        if let Some(fix) = fix {
            self.line(&format!("    fix: {fix}"));
        }
    }

    fn pass(&mut self, title: &str) {
        self.item(Mark::Pass, title, None)
    }

    fn fail(&mut self, title: &str, fix: &str) {
        self.item(Mark::Fail, title, Some(fix))
    }

    fn skip(&mut self, title: &str, why: &str) {
        self.item(Mark::Skip, &format!("{title}: not checked, {why}"), None)
    }

    fn request(
        &self,
        method: &str,
        url: &str,
        token: Option<&Secret>,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let auth = token.map(|t| format!("Bearer {}", t.expose()));
        let sent = match (method, body) {
            ("POST", body) => {
                let mut r = self.agent.post(url).content_type("application/json");
                if let Some(auth) = &auth {
                    r = r.header("Authorization", auth);
                }
                r.send(body.map(Value::to_string).unwrap_or_default())
            }
            ("HEAD", _) => self.agent.head(url).call(),
            _ => {
                let mut r = self.agent.get(url).header("Accept", "application/json");
                if let Some(auth) = &auth {
                    r = r.header("Authorization", auth);
                }
                r.call()
            }
        };
        let mut response = sent.map_err(|e| format!("{method} {url}: {e}"))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let (content_type, location) = (header("content-type"), header("location"));
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| format!("{method} {url}: {e}"))?;
        Ok(Answer {
            status: response.status().as_u16(),
            content_type: content_type.unwrap_or_default(),
            location,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Whether `answer` (to `method path` on `base`) is what `base` answers to a path nobody
    /// serves: a route of the other listener must be exactly that.
    fn looks_unknown(
        &mut self,
        base: &str,
        path: &str,
        method: &'static str,
        answer: &Answer,
    ) -> bool {
        let api = matches!(crate::routes::face(path), Face::Api);
        let key = (base.to_string(), api, method);
        if !self.unknown.contains_key(&key) {
            let nowhere = if api {
                "/api/check-deployment-no-such-route"
            } else {
                "/check-deployment-no-such-route"
            };
            let body = (method == "POST").then(|| json!({}));
            let answer = self.request(method, &format!("{base}{nowhere}"), None, body.as_ref());
            self.unknown.insert(key.clone(), answer);
        }
        matches!(&self.unknown[&key], Ok(unknown) if unknown.same_as(answer))
    }

    /// `/health` and `/ready` answer 200 on each listener the routing table serves them on.
    fn probes(&mut self) {
        for path in ["/health", "/ready"] {
            let Some((route, _)) = find(path) else {
                continue;
            };
            let listeners = [
                ("public", self.public.clone(), Listener::Public),
                ("internal", self.internal.clone(), Listener::Internal),
            ];
            for (name, base, listener) in listeners {
                if !listener.serves(route.exposure) {
                    continue;
                }
                let title = format!("{name} {path} answers 200");
                match self.request("GET", &format!("{base}{path}"), None, None) {
                    Ok(a) if a.status == 200 && path == "/health" => {
                        match a.json()["status"].as_str() {
                            Some("healthy") => self.pass(&format!("{title} (healthy)")),
                            other => self.fail(
                                &format!("{title}, but its status is {}", other.unwrap_or("not JSON")),
                                "the state store is out of reach from the service: check OAUTH_RELAY_REDIS_URL and the network path to Redis",
                            ),
                        }
                    }
                    Ok(a) if a.status == 200 => self.pass(&title),
                    Ok(a) if a.status == 503 => self.fail(
                        &format!("{title}: {}", a.message()),
                        "the state store does not answer the service: check Redis (OAUTH_RELAY_REDIS_URL) and its logs",
                    ),
                    Ok(a) => self.fail(
                        &format!("{title}: {}", a.message()),
                        &format!("{base} does not reach the relay's {name} listener: check the URL and the {}", route_to(name)),
                    ),
                    Err(e) => self.fail(
                        &format!("{title}: {e}"),
                        &format!("{base} cannot be reached from here: check the URL, DNS and the {}", route_to(name)),
                    ),
                }
            }
        }
    }

    /// Every internal route answers as an unknown path on the public URL, and is served on the
    /// internal URL.
    fn split(&mut self) {
        let (public, internal) = (self.public.clone(), self.internal.clone());
        let (mut exposed, mut missing, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for route in ROUTES.iter().filter(|r| r.exposure == Exposure::Internal) {
            let path = sample(route.pattern);
            let method = route.methods[0];
            let body = (method == "POST").then(|| json!({}));
            for (base, want_served) in [(&public, false), (&internal, true)] {
                match self.request(method, &format!("{base}{path}"), None, body.as_ref()) {
                    Ok(a) => {
                        let unknown = self.looks_unknown(base, &path, method, &a);
                        if want_served && unknown {
                            missing.push(route.name);
                        } else if !want_served && !unknown {
                            exposed.push(route.name);
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let total = ROUTES
            .iter()
            .filter(|r| r.exposure == Exposure::Internal)
            .count();
        if let Some(e) = errors.first() {
            self.fail(
                &format!(
                    "listener split: {} request(s) failed, e.g. {e}",
                    errors.len()
                ),
                "check that both URLs reach the relay",
            );
        }
        if exposed.is_empty() {
            self.pass(&format!(
                "public URL does not serve the {total} internal routes (each answers as an unknown path)"
            ));
        } else {
            self.fail(
                &format!("public URL serves internal routes: {}", exposed.join(", ")),
                "split the listeners (OAUTH_RELAY_INTERNAL_ADDR=0.0.0.0:8001) and route the ingress to the public port (8000) only; --public-url must not be the internal URL",
            );
        }
        if missing.is_empty() {
            self.pass(&format!("internal URL serves the {total} internal routes"));
        } else {
            self.fail(
                &format!("internal URL does not serve: {}", missing.join(", ")),
                "check --internal-url (it must reach OAUTH_RELAY_INTERNAL_ADDR, the Service oauth-relay-internal); broker routes are missing when broker mode is off",
            );
        }
    }

    /// Session creation without the broker token, and with a wrong one: 401. Returns whether
    /// broker mode answered at all.
    fn sessions_refused(&mut self) -> bool {
        let url = format!("{}/sessions", self.internal);
        let body = json!({ "provider": M365, "expected_email": PLACEHOLDER_EMAIL });
        let wrong = Secret::new(format!("check-deployment-wrong-token-{}", short_hash(&url)));
        let title = "session creation refused without the broker token (and with a wrong one)";
        let answers = [
            self.request("POST", &url, None, Some(&body)),
            self.request("POST", &url, Some(&wrong), Some(&body)),
        ];
        match answers {
            [Ok(a), Ok(b)] if a.status == 401 && b.status == 401 => {
                self.pass(&format!("{title}: 401"));
                true
            }
            [Ok(a), _] if a.status == 404 => {
                self.fail(
                    &format!("{title}: POST /sessions is 404"),
                    "broker mode is off: set WK_PUBLIC_BASE_URL, the broker token (WK_M365_BROKER_TOKEN) and a provider on the service",
                );
                false
            }
            [Ok(a), Ok(b)] => {
                let status = if a.status != 401 { a.status } else { b.status };
                self.fail(
                    &format!("{title}: HTTP {status}"),
                    "something in front of the service adds or ignores credentials: session creation must answer 401 without the token",
                );
                true
            }
            [Err(e), _] | [_, Err(e)] => {
                self.fail(&format!("{title}: {e}"), "check --internal-url");
                false
            }
        }
    }

    /// The service's description, asked with the token (which this also checks).
    fn described(&mut self, token: Option<&Secret>, broker_on: bool) -> Option<Value> {
        let title = "broker token accepted (GET /deployment)";
        let Some(token) = token else {
            self.fail(
                &format!("{title}: no broker token was given to this command"),
                "export OAUTH_RELAY_BROKER_TOKEN (the Secret's broker token), or use --broker-token-file PATH or --broker-token-stdin",
            );
            return None;
        };
        match self.request(
            "GET",
            &format!("{}/deployment", self.internal),
            Some(token),
            None,
        ) {
            Ok(a) if a.status == 200 && a.json().is_object() => {
                self.pass(title);
                Some(a.json())
            }
            Ok(a) if a.status == 401 => {
                self.token_refused = true;
                self.fail(
                    &format!("{title}: the service refused it (401)"),
                    "give this command the broker token the service has (WK_M365_BROKER_TOKEN or OAUTH_RELAY_BROKER_TOKEN of its Secret)",
                );
                None
            }
            Ok(a) if a.status == 404 && broker_on => {
                self.fail(
                    &format!("{title}: the service does not describe itself (404)"),
                    "the service is older than this command: update it (or check --provider NAME with a command of its version)",
                );
                None
            }
            Ok(a) => {
                self.fail(
                    &format!("{title}: {}", a.message()),
                    "check --internal-url and that broker mode is on",
                );
                None
            }
            Err(e) => {
                self.fail(&format!("{title}: {e}"), "check --internal-url");
                None
            }
        }
    }

    /// What the service says it is, and its public URL against ours.
    fn service(&mut self, d: &Value) {
        let names: Vec<&str> = d["providers"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        self.line(&format!(
            "  service:      oauth-relay {}, listeners {}, store {}, providers {}",
            d["version"].as_str().unwrap_or("?"),
            d["listeners"].as_str().unwrap_or("?"),
            d["store"].as_str().unwrap_or("?"),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ));
        let theirs = d["public_url"].as_str().unwrap_or("");
        if theirs == self.public {
            self.pass(&format!("the service's public URL is {theirs}"));
        } else {
            self.fail(
                &format!("the service's public URL is {theirs}, not {}", self.public),
                &format!(
                    "set {PUBLIC_URL_VARS} to {} on the service (or pass the right --public-url)",
                    self.public
                ),
            );
        }
    }

    fn providers(&mut self, wanted: &[String], description: Option<&Value>, token: &Secret) {
        let described: Vec<Value> = description
            .and_then(|d| d["providers"].as_array().cloned())
            .unwrap_or_default();
        let mut chosen = Vec::new();
        if wanted.is_empty() {
            chosen.extend(described.iter().map(|p| ProviderInfo {
                name: p["name"].as_str().unwrap_or_default().to_string(),
                described: Some(p.clone()),
            }));
        }
        for name in wanted {
            match described.iter().find(|p| p["name"] == name.as_str()) {
                Some(p) => chosen.push(ProviderInfo {
                    name: name.clone(),
                    described: Some(p.clone()),
                }),
                None if description.is_some() => self.fail(
                    &format!("{name}: configured on the service"),
                    &if name == M365 {
                        "set WK_M365_CLIENT_ID (and the other WK_M365_* settings) on the service".to_string()
                    } else {
                        format!("add {name} to OAUTH_RELAY_PROVIDERS with its {}* settings on the service", prefix_of(name))
                    },
                ),
                // The service does not describe itself: the name is all there is to go on.
                None => chosen.push(ProviderInfo {
                    name: name.clone(),
                    described: None,
                }),
            }
        }
        if chosen.is_empty() && wanted.is_empty() {
            if self.token_refused {
                self.skip(
                    "providers' sessions and login links",
                    "the broker token was refused (see above)",
                );
            } else {
                self.skip(
                    "providers",
                    "the service names none (and --provider names none)",
                );
            }
        }
        for p in chosen {
            self.provider(&p, description, token);
        }
    }

    fn provider(&mut self, p: &ProviderInfo, description: Option<&Value>, token: &Secret) {
        let name = p.name.as_str();
        let (path, mut body) = if name == M365 {
            ("/m365/sessions", json!({}))
        } else {
            ("/sessions", json!({ "provider": name }))
        };
        body["expected_email"] = json!(PLACEHOLDER_EMAIL);
        let title = format!("{name}: session created (POST {path})");
        let session = match self.request(
            "POST",
            &format!("{}{path}", self.internal),
            Some(token),
            Some(&body),
        ) {
            Ok(a) if a.status == 200 => a.json(),
            Ok(a) => {
                let fix = match a.status {
                    503 => "the service holds too many sessions (OAUTH_RELAY_MAX_SESSIONS) or its store is unavailable".to_string(),
                    _ => format!("read the message; the provider's settings are {}*", if name == M365 { "WK_M365_".to_string() } else { prefix_of(name) }),
                };
                self.fail(&format!("{title}: {}", a.message()), &fix);
                return self.skip(&format!("{name}: login link"), "no session");
            }
            Err(e) => {
                self.fail(&format!("{title}: {e}"), "check --internal-url");
                return self.skip(&format!("{name}: login link"), "no session");
            }
        };
        let (Some(link), Some(handle)) = (session["login_url"].as_str(), session["state"].as_str())
        else {
            self.fail(
                &format!("{title}: the answer has no login_url or state"),
                "the service is not a compatible oauth-relay: check --internal-url",
            );
            return self.skip(&format!("{name}: login link"), "no session");
        };
        let link_path = link
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]))
            .unwrap_or("/")
            .to_string();
        let link_id = link_path.rsplit('/').next().unwrap_or_default().to_string();
        self.secrets.extend([handle.to_string(), link_id]);
        self.pass(&title);
        let template = find(&link_path).map(|(r, _)| r.name).unwrap_or("?");
        if link.starts_with(&format!("{}/", self.public)) {
            self.pass(&format!(
                "{name}: login link is on the public URL ({}{template})",
                self.public
            ));
        } else {
            let origin = link.split_once("://").map(|(scheme, rest)| {
                format!("{scheme}://{}", rest.split('/').next().unwrap_or_default())
            });
            self.fail(
                &format!(
                    "{name}: login link points to {}, not the public URL {}",
                    origin.unwrap_or_default(),
                    self.public
                ),
                &format!("set {PUBLIC_URL_VARS} to {} on the service", self.public),
            );
        }
        // Opened as a browser would, at the public URL, without following the provider.
        let title = format!("{name}: login link redirects to the provider");
        let location = match self.request("GET", &format!("{}{link_path}", self.public), None, None)
        {
            Ok(a) if a.status == 302 && a.location.is_some() => a.location.unwrap_or_default(),
            Ok(a) => {
                self.fail(
                    &format!("{title}: {} instead of 302", a.message()),
                    &format!("the public URL must reach the service's {template} (check the ingress's paths)"),
                );
                return self.skip(
                    &format!("{name}: the provider's authorization request"),
                    "no redirect to read",
                );
            }
            Err(e) => {
                self.fail(
                    &format!("{title}: {e}"),
                    "check --public-url and the ingress",
                );
                return self.skip(
                    &format!("{name}: the provider's authorization request"),
                    "no redirect to read",
                );
            }
        };
        let (endpoint, query) = location.split_once('?').unwrap_or((location.as_str(), ""));
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        for key in ["state", "code_challenge", "nonce"] {
            if let Some(v) = params.get(key) {
                self.secrets.push(v.clone());
            }
        }
        self.pass(&format!("{title} (302 to {endpoint})"));
        self.redirect_uri(p, description, params.get("redirect_uri"));
        self.pkce(name, &params, handle, &link_path);
        self.scopes(p, params.get("scope"));
        self.upstreams(p);
    }

    fn redirect_uri(
        &mut self,
        p: &ProviderInfo,
        description: Option<&Value>,
        sent: Option<&String>,
    ) {
        let name = p.name.as_str();
        // The callback path as the service has it (its redirect URI without its public URL).
        let theirs = description.and_then(|d| d["public_url"].as_str());
        let callback = p
            .described
            .as_ref()
            .and_then(|d| d["redirect_uri"].as_str())
            .and_then(|uri| theirs.and_then(|t| uri.strip_prefix(t)))
            .map(String::from)
            .unwrap_or_else(|| {
                if name == M365 {
                    "/m365/callback".into()
                } else {
                    format!("/login/{name}/callback")
                }
            });
        let expected = format!("{}{callback}", self.public);
        match sent {
            Some(sent) if *sent == expected => self.pass(&format!("{name}: redirect_uri is {expected}")),
            Some(sent) => self.fail(
                &format!("{name}: redirect_uri is {sent}, not {expected}"),
                &format!("set {PUBLIC_URL_VARS} to {} on the service, and register {expected} at the provider", self.public),
            ),
            None => self.fail(
                &format!("{name}: the authorization request has no redirect_uri"),
                "the service is not a compatible oauth-relay: update it",
            ),
        }
    }

    fn pkce(
        &mut self,
        name: &str,
        params: &HashMap<String, String>,
        handle: &str,
        link_path: &str,
    ) {
        let challenge_ok = params.get("code_challenge").is_some_and(|c| {
            c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        let method_ok = params.get("code_challenge_method").map(String::as_str) == Some("S256");
        let state_ok = params.get("state").is_some_and(|s| {
            s.len() >= 16 && s != handle && !link_path.ends_with(&format!("/{s}"))
        });
        let title = format!("{name}: PKCE S256 with a code_challenge, and a state of its own");
        if challenge_ok && method_ok && state_ok {
            self.pass(&title);
        } else {
            let mut wrong = Vec::new();
            if !method_ok {
                wrong.push("code_challenge_method is not S256");
            }
            if !challenge_ok {
                wrong.push("no 43-character code_challenge");
            }
            if !state_ok {
                wrong.push("no state, or one equal to the session's handle or link id");
            }
            self.fail(
                &format!("{title}: {}", wrong.join("; ")),
                "the service is not a compatible oauth-relay: update it",
            );
        }
    }

    fn scopes(&mut self, p: &ProviderInfo, sent: Option<&String>) {
        let name = p.name.as_str();
        let sent: Vec<&str> = sent
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        let setting = if name == M365 {
            "WK_M365_SCOPES".to_string()
        } else {
            format!("{}SCOPES", prefix_of(name))
        };
        let title = format!("{name}: scopes {}", sent.join(" "));
        if sent.is_empty() {
            return self.fail(
                &format!("{name}: the authorization request names no scope"),
                &format!("set {setting} on the service"),
            );
        }
        let described = p.described.as_ref();
        let configured: Option<Vec<&str>> = described
            .and_then(|d| d["session_scopes"].as_array())
            .map(|list| list.iter().filter_map(Value::as_str).collect());
        if let Some(configured) = &configured {
            let extra: Vec<&str> = sent
                .iter()
                .copied()
                .filter(|s| !configured.contains(s))
                .collect();
            let absent: Vec<&str> = configured
                .iter()
                .copied()
                .filter(|s| !sent.contains(s))
                .collect();
            if !extra.is_empty() || !absent.is_empty() {
                return self.fail(
                    &format!("{title}: not the configured ones ({})", configured.join(" ")),
                    "something rewrote the login link's redirect: the service's own answer must reach the browser unchanged",
                );
            }
        }
        let kind = described.and_then(|d| d["kind"].as_str());
        if kind == Some("microsoft") {
            let writes: Vec<&str> = sent
                .iter()
                .copied()
                .filter(|s| !crate::provider::microsoft::is_read_only_scope(s))
                .collect();
            if writes.is_empty() {
                self.pass(&format!("{title} (the configured ones, read-only)"));
            } else {
                self.fail(
                    &format!("{title}: not read-only: {}", writes.join(" ")),
                    &format!("remove {} from {setting} on the service (only read-only Graph scopes belong there)", writes.join(" ")),
                );
            }
        } else if configured.is_some() {
            self.pass(&format!("{title} (the configured ones)"));
        } else {
            self.skip(&title, "the service does not say which scopes it allows");
        }
    }

    /// What the service says of its own reach of the provider's discovery document, keys, API.
    fn upstreams(&mut self, p: &ProviderInfo) {
        let name = p.name.as_str();
        let Some(upstreams) = p
            .described
            .as_ref()
            .and_then(|d| d["upstreams"].as_array().cloned())
        else {
            return self.skip(
                &format!("{name}: the provider reachable from the service"),
                "the service does not say",
            );
        };
        for u in upstreams {
            let what = u["name"].as_str().unwrap_or("?");
            let url = u["url"].as_str().unwrap_or("?");
            let detail = u["detail"].as_str().unwrap_or("");
            if u["reachable"] == true {
                self.pass(&format!(
                    "{name}: {what} reachable from the service ({url}: {detail})"
                ));
            } else {
                let host = url
                    .split_once("://")
                    .map(|(_, r)| r.split('/').next().unwrap_or(r))
                    .unwrap_or(url);
                self.fail(
                    &format!("{name}: {what} not reachable from the service ({url}: {detail})"),
                    &format!(
                        "let the pods reach {host} (egress NetworkPolicy, HTTPS_PROXY/NO_PROXY), or correct {}",
                        u["setting"].as_str().unwrap_or("the provider's settings")
                    ),
                );
            }
        }
    }

    /// Completion events, as the service says (or its /metrics, which lists their counters only
    /// when they are on).
    fn events(&mut self, expected: bool, description: Option<&Value>) {
        let said = match description {
            Some(d) => Some((
                d["events"]["configured"] == true,
                d["events"]["origin"].as_str().map(String::from),
            )),
            None => self
                .request("GET", &format!("{}/metrics", self.internal), None, None)
                .ok()
                .filter(|a| a.status == 200)
                .map(|a| {
                    (
                        a.body.contains("oauth_relay_webhook_events_queued_total"),
                        None,
                    )
                }),
        };
        let fix =
            "set OAUTH_RELAY_WEBHOOK_URL and OAUTH_RELAY_WEBHOOK_SECRET (or _FILE) on the service";
        match (said, expected) {
            (Some((true, origin)), _) => {
                let to = origin.map(|o| format!(" (to {o})")).unwrap_or_default();
                if expected {
                    self.pass(&format!("completion events configured{to}"));
                } else {
                    self.line(&format!("  note: completion events are configured{to}"));
                }
            }
            (Some((false, _)), true) => {
                self.fail("completion events configured: they are off", fix)
            }
            (Some((false, _)), false) => {
                self.line("  note: completion events are off (--expect-events requires them)")
            }
            (None, true) => self.fail(
                "completion events configured: the service does not say",
                "check --internal-url and the broker token",
            ),
            (None, false) => {}
        }
    }
}

/// `text` with every secret replaced by its short hash (secrets shorter than 8 characters
/// cannot be told from ordinary words, and none of ours is that short).
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), &format!("<hash {}>", short_hash(secret)));
        }
    }
    text
}

/// What routes a URL to each listener.
fn route_to(listener: &str) -> &'static str {
    if listener == "public" {
        "ingress and the Service oauth-relay"
    } else {
        "Service oauth-relay-internal and the NetworkPolicy"
    }
}

/// A concrete path of a route, for asking whether a URL serves it.
fn sample(pattern: Pattern) -> String {
    match pattern {
        Pattern::Exact(p) => p.to_string(),
        Pattern::Prefix(p) => format!("{p}check-deployment"),
        Pattern::Around(prefix, suffix) => format!("{prefix}check-deployment{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_a_line() {
        let secrets = vec![
            "broker-token-0123456789".to_string(),
            "Xq3linkid".to_string(),
        ];
        let line = scrub(
            "GET http://relay/login/Xq3linkid: Bearer broker-token-0123456789 refused",
            &secrets,
        );
        assert!(
            !line.contains("Xq3linkid") && !line.contains("broker-token"),
            "{line}"
        );
        assert!(
            line.contains(&format!("<hash {}>", short_hash("Xq3linkid"))),
            "{line}"
        );
    }

    #[test]
    fn samples_are_paths_of_their_routes() {
        for route in ROUTES {
            let path = sample(route.pattern);
            assert_eq!(find(&path).map(|(r, _)| r.name), Some(route.name), "{path}");
        }
    }
}
