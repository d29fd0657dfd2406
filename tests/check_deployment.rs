//! `oauth-relay check-deployment` against the real binary: a broker with split listeners on fake
//! Microsoft, GitHub and Google passes every item; each misconfiguration the command checks
//! (a public URL that is not the service's, so the redirect URI differs; one listener serving
//! everything; no broker token or a wrong one; a provider the service cannot reach; completion
//! events asked for but off) fails its item with a fix line and exit status 1; the broker token
//! and the sessions' secrets are never printed.

use crate::support;
use support::fake_github;
use support::fake_google;

use fake_github::{FakeGitHub, FakeGitHubConfig};
use fake_google::{FakeGoogle, FakeGoogleConfig};
use std::io::Write;
use std::process::Stdio;
use support::broker::{providers_env, Broker, Planned, BROKER_TOKEN};
use support::fake_microsoft::{FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::webhook_receiver::{test_secret, Receiver};

/// A broker as deployed: split listeners, `m365` (the WK_M365_* settings), `github` and
/// `google`, each on its fake, and completion events to a receiver.
struct Deployment {
    microsoft: FakeMicrosoft,
    github: FakeGitHub,
    google: Option<FakeGoogle>,
    _receiver: Option<Receiver>,
    broker: Broker,
}

impl Deployment {
    fn start(split: bool, events: bool) -> Deployment {
        let planned = Planned::new();
        let microsoft = FakeMicrosoft::start_with(FakeConfig {
            redirect_uris: vec![format!("{}/m365/callback", planned.public)],
            ..FakeConfig::default()
        });
        let github = FakeGitHub::start_with(FakeGitHubConfig {
            redirect_uri: planned.callback("github"),
            ..FakeGitHubConfig::default()
        });
        let google = FakeGoogle::start_with(FakeGoogleConfig {
            redirect_uris: vec![planned.callback("google")],
            ..FakeGoogleConfig::default()
        });
        let ms = microsoft.config();
        let mut env = providers_env(&[
            ("github", github.provider_settings()),
            ("google", google.provider_settings()),
        ]);
        let base = microsoft.base_url();
        for (k, v) in [
            ("WK_M365_CLIENT_ID", ms.client_id.as_str()),
            ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID),
            ("WK_M365_LOGIN_BASE_URL", &base),
            ("WK_M365_GRAPH_BASE_URL", &base),
        ] {
            env.push((k.into(), v.into()));
        }
        if let Some(secret) = &ms.client_secret {
            env.push(("WK_M365_CLIENT_SECRET".into(), secret.clone()));
        }
        if split {
            env.push(("OAUTH_RELAY_INTERNAL_ADDR".into(), "127.0.0.1:0".into()));
        }
        let receiver = events.then(|| Receiver::start(&test_secret()));
        if let Some(r) = &receiver {
            env.push(("OAUTH_RELAY_WEBHOOK_URL".into(), r.url()));
            env.push(("OAUTH_RELAY_WEBHOOK_SECRET".into(), test_secret()));
        }
        let broker = planned.start(&env);
        Deployment {
            microsoft,
            github,
            google: Some(google),
            _receiver: receiver,
            broker,
        }
    }

    /// The internal listener's URL (the only listener's when there is one).
    fn internal(&self) -> String {
        let relay = &self.broker.relay;
        format!("http://{}", relay.internal_addr.unwrap_or(relay.addr))
    }

    /// Runs the command with `args` after `--public-url` and `--internal-url`, the broker token
    /// in `OAUTH_RELAY_BROKER_TOKEN` when `token` is given.
    fn check(&self, public: &str, token: Option<&str>, args: &[&str]) -> Checked {
        self.check_with_stdin(public, token, args, "")
    }

    /// The same, with `stdin` on its standard input.
    fn check_with_stdin(
        &self,
        public: &str,
        token: Option<&str>,
        args: &[&str],
        stdin: &str,
    ) -> Checked {
        let mut command = support::oauth_relay(&["check-deployment", "--public-url", public]);
        if let Some(token) = token {
            command.env("OAUTH_RELAY_BROKER_TOKEN", token);
        }
        let mut child = command
            .args(["--internal-url", &self.internal()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run oauth-relay check-deployment");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let checked = Checked {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        };
        for printed in [&checked.stdout, &checked.stderr] {
            assert!(
                !printed.contains(BROKER_TOKEN),
                "the broker token was printed:\n{printed}"
            );
            for secret_parameter in ["state=", "code_challenge=", "nonce=", "login_hint="] {
                assert!(
                    !printed.contains(secret_parameter),
                    "{secret_parameter} was printed:\n{printed}"
                );
            }
        }
        checked
    }
}

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Checked {
    /// The lines with this mark (`PASS`, `FAIL`, `SKIP`).
    fn marked(&self, mark: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{mark} ")))
            .collect()
    }

    /// The failed item containing `needle`, and its fix line (the next line).
    fn failed(&self, needle: &str) -> (String, String) {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("FAIL ") && l.contains(needle))
            .unwrap_or_else(|| panic!("no failed item with {needle:?}:\n{}", self.stdout));
        let fix = lines.get(at + 1).copied().unwrap_or_default();
        assert!(
            fix.trim_start().starts_with("fix: "),
            "no fix line after {:?}:\n{}",
            lines[at],
            self.stdout
        );
        (lines[at].to_string(), fix.to_string())
    }

    fn passed(&self, needle: &str) -> bool {
        self.marked("PASS").iter().any(|l| l.contains(needle))
    }
}

#[test]
fn a_correct_deployment_passes_every_item() {
    let d = Deployment::start(true, true);
    let public = d.broker.public.clone();
    let out = d.check(&public, Some(BROKER_TOKEN), &["--ascii", "--expect-events"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.marked("FAIL").is_empty() && out.marked("SKIP").is_empty());
    for item in [
        "public /health answers 200 (healthy)",
        "public /ready answers 200",
        "public URL does not serve the",
        "internal URL serves the",
        "session creation refused without the broker token (and with a wrong one): 401",
        "broker token accepted",
        &format!("the service's public URL is {public}"),
        &format!("m365: redirect_uri is {public}/m365/callback"),
        &format!("github: redirect_uri is {public}/login/github/callback"),
        &format!("google: redirect_uri is {public}/login/google/callback"),
        &format!("m365: login link is on the public URL ({public}/m365/start/{{link}})"),
        &format!("github: login link is on the public URL ({public}/login/{{link}})"),
        "m365: PKCE S256 with a code_challenge, and a state of its own",
        "github: PKCE S256",
        "google: PKCE S256",
        "m365: scopes openid offline_access User.Read Mail.Read Calendars.Read (the configured ones, read-only)",
        "github: scopes read:user user:email (the configured ones)",
        "m365: discovery reachable from the service",
        "m365: graph reachable from the service",
        "google: discovery reachable from the service",
        "google: keys reachable from the service",
        "github: api reachable from the service",
        "github: token endpoint reachable from the service",
        "completion events configured (to http://127.0.0.1:",
    ] {
        assert!(out.passed(item), "no PASS {item:?} in:\n{}", out.stdout);
    }
    assert!(
        out.stdout.contains(&format!(
            "{} passed, 0 failed, 0 skipped",
            out.marked("PASS").len()
        )),
        "{}",
        out.stdout
    );
    // The login links were opened, and nothing followed them to the providers.
    assert_eq!(d.microsoft.issued_codes(), 0);
    assert_eq!(d.github.issued_codes(), 0);
    assert!(d.google.as_ref().unwrap().authorize_requests().is_empty());
    d.broker.relay.wait_for_log("\"link_opened\"");

    // The same without --ascii: the marks for a terminal.
    let out = d.check(&public, Some(BROKER_TOKEN), &[]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(out
        .stdout
        .lines()
        .any(|l| l.starts_with("✓ m365: redirect_uri")));
    assert!(!out.stdout.contains('✗'));
    assert!(out
        .stdout
        .contains("note: completion events are configured"));
}

#[test]
fn a_public_url_that_is_not_the_services_fails_the_redirect_uri_with_its_fix() {
    let d = Deployment::start(true, false);
    // The same listener under another name: what the operator registered at the providers is
    // not what the service was told.
    let elsewhere = d.broker.public.replace("127.0.0.1", "localhost");
    let out = d.check(&elsewhere, Some(BROKER_TOKEN), &["--ascii"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let (item, fix) = out.failed("m365: redirect_uri");
    assert!(
        item.contains(&format!(
            "{}/m365/callback, not {elsewhere}/m365/callback",
            d.broker.public
        )),
        "{item}"
    );
    assert!(
        fix.contains(&format!(
            "WK_PUBLIC_BASE_URL (or OAUTH_RELAY_PUBLIC_URL) to {elsewhere}"
        )) && fix.contains(&format!(
            "register {elsewhere}/m365/callback at the provider"
        )),
        "{fix}"
    );
    out.failed("github: redirect_uri");
    out.failed("google: redirect_uri");
    let (_, fix) = out.failed("the service's public URL is");
    assert!(fix.contains("WK_PUBLIC_BASE_URL"), "{fix}");
    out.failed("m365: login link points to");
    // What does not depend on the public URL still passes.
    assert!(out.passed("public /health answers 200"));
    assert!(out.passed("google: keys reachable from the service"));
}

#[test]
fn without_the_broker_token_or_with_a_wrong_one_the_token_items_fail() {
    let d = Deployment::start(true, false);
    let public = d.broker.public.clone();
    let out = d.check(&public, None, &["--ascii"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let (_, fix) = out.failed("no broker token was given to this command");
    assert!(fix.contains("OAUTH_RELAY_BROKER_TOKEN"), "{fix}");
    assert!(out
        .marked("SKIP")
        .iter()
        .any(|l| l.contains("providers' sessions and login links")));
    assert!(out.passed("session creation refused without the broker token"));

    let wrong = "not-the-broker-token-0123456789";
    let out = d.check(&public, Some(wrong), &["--ascii"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(!out.stdout.contains(wrong), "{}", out.stdout);
    let (item, fix) = out.failed("broker token accepted");
    assert!(item.contains("refused it (401)"), "{item}");
    assert!(fix.contains("WK_M365_BROKER_TOKEN"), "{fix}");
    assert!(out.marked("SKIP").iter().any(|l| l.contains(
        "providers' sessions and login links: not checked, the broker token was refused"
    )));

    // From a file, and from stdin: accepted, and still never printed.
    let dir = std::env::temp_dir().join(format!("check-deployment-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker-token");
    std::fs::write(&file, format!("{BROKER_TOKEN}\n")).unwrap();
    let out = d.check(
        &public,
        None,
        &["--ascii", "--broker-token-file", file.to_str().unwrap()],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let out = d.check_with_stdin(
        &public,
        None,
        &["--ascii", "--broker-token-stdin"],
        &format!("{BROKER_TOKEN}\n"),
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
}

#[test]
fn a_provider_whose_discovery_the_service_cannot_reach_fails_its_items() {
    let mut d = Deployment::start(true, false);
    let issuer = d.google.as_ref().unwrap().issuer();
    // Google goes away after start-up (discovery worked then): the service cannot reach it now.
    drop(d.google.take());
    let out = d.check(&d.broker.public.clone(), Some(BROKER_TOKEN), &["--ascii"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let (item, fix) = out.failed("google: discovery not reachable from the service");
    assert!(item.contains(&issuer), "{item}");
    assert!(
        fix.contains("OAUTH_RELAY_PROVIDER_GOOGLE_ISSUER") && fix.contains("let the pods reach"),
        "{fix}"
    );
    out.failed("google: keys not reachable from the service");
    // The others are unaffected, and the link still redirects (the browser goes there, not us).
    assert!(out.passed("google: login link redirects to the provider"));
    assert!(out.passed("github: api reachable from the service"));
    assert!(out.passed("m365: discovery reachable from the service"));
}

#[test]
fn one_listener_for_everything_and_events_asked_for_but_off_fail_their_items() {
    let d = Deployment::start(false, false);
    let public = d.broker.public.clone();
    // Without a split, the internal URL is the one listener too.
    let out = d.check(&public, Some(BROKER_TOKEN), &["--ascii", "--expect-events"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let (item, fix) = out.failed("public URL serves internal routes");
    for route in [
        "/sessions",
        "/metrics",
        "/api/callback/{state}",
        "/deployment",
    ] {
        assert!(item.contains(route), "{item}");
    }
    assert!(fix.contains("OAUTH_RELAY_INTERNAL_ADDR"), "{fix}");
    let (_, fix) = out.failed("completion events configured: they are off");
    assert!(fix.contains("OAUTH_RELAY_WEBHOOK_URL"), "{fix}");
    assert!(out.passed("internal URL serves the"));
    assert!(out.passed("m365: redirect_uri is"));
    assert_eq!(out.marked("FAIL").len(), 2, "{}", out.stdout);

    // Asked for providers by name: one that is not configured fails with what to set.
    let out = d.check(
        &public,
        Some(BROKER_TOKEN),
        &["--ascii", "--provider", "github,corp"],
    );
    let (_, fix) = out.failed("corp: configured on the service");
    assert!(
        fix.contains("OAUTH_RELAY_PROVIDERS") && fix.contains("OAUTH_RELAY_PROVIDER_CORP_"),
        "{fix}"
    );
    assert!(out.passed("github: redirect_uri"));
    assert!(!out.stdout.contains("m365: "), "{}", out.stdout);
}
