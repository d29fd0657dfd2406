//! Broker mode end to end: the real binary against the fake Microsoft identity platform and
//! Graph in tests/support, which enforce the exact redirect URI, PKCE, client authentication
//! and one-time codes. Every success and failure path, races, expiry and a slow provider.

use crate::support;

use serde_json::{json, Value};
use std::time::Duration;
use support::broker::{Broker, Planned, BROKER_TOKEN};
use support::fake_microsoft::{self as fake, FakeConfig, FakeMicrosoft, DEFAULT_TENANT_ID};
use support::{get_url, path_of, HttpResponse};

const EMAIL: &str = "ana.silva@contoso.example";

struct Setup {
    fake: FakeMicrosoft,
    broker: Broker,
}

/// A fake Microsoft and a broker wired to each other through the WK_M365_* variables (the
/// provider `m365`). `tweak` adjusts the fake; `env` adds or overrides broker settings.
fn setup(tweak: impl FnOnce(&mut FakeConfig), env: &[(&str, &str)]) -> Setup {
    let planned = Planned::new();
    let mut cfg = FakeConfig {
        redirect_uris: vec![format!("{}/m365/callback", planned.public)],
        ..FakeConfig::default()
    };
    tweak(&mut cfg);
    let fake = FakeMicrosoft::start_with(cfg.clone());
    let base = fake.base_url();
    let mut vars: Vec<(String, String)> = [
        ("WK_M365_CLIENT_ID", cfg.client_id.as_str()),
        ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID),
        ("WK_M365_LOGIN_BASE_URL", &base),
        ("WK_M365_GRAPH_BASE_URL", &base),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(secret) = &cfg.client_secret {
        vars.push(("WK_M365_CLIENT_SECRET".into(), secret.clone()));
    }
    for (k, v) in env {
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_string(), v.to_string()));
    }
    let broker = planned.start_wk(&vars);
    Setup { fake, broker }
}

impl Setup {
    fn create(&self, body: Value) -> HttpResponse {
        self.broker.create("/m365/sessions", &body)
    }

    fn session(&self) -> Value {
        let res = self.create(json!({ "expected_email": EMAIL }));
        assert_eq!(res.status, 200, "{}", res.text());
        res.json()
    }

    /// Follows the login link to Microsoft and back, as a browser would, without the final
    /// request: returns the callback path Microsoft redirected to.
    fn click(&self, session: &Value) -> String {
        let authorize = self.broker.open(session);
        let res = get_url(&authorize);
        assert_eq!(
            res.status,
            302,
            "the fake refused the authorize request: {}",
            res.text()
        );
        path_of(res.header("Location").unwrap())
    }

    fn sign_in(&self, session: &Value) -> HttpResponse {
        let callback = self.click(session);
        self.broker.relay.get(&callback)
    }

    fn token(&self, session: &Value) -> HttpResponse {
        self.broker.token(session)
    }

    fn status(&self, session: &Value) -> Value {
        self.broker.status(session)
    }
}

#[test]
fn a_person_signs_in_and_the_caller_gets_the_tokens_once() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    for key in [
        "state",
        "expected_email",
        "login_url",
        "status_url",
        "expires_at",
    ] {
        assert!(session[key].is_string(), "{key} missing: {session}");
    }
    assert_eq!(session["expected_email"], EMAIL);
    assert!(session.get("code_verifier").is_none() && !session.to_string().contains("verifier"));
    assert_eq!(s.status(&session)["status"], "pending");
    assert_eq!(s.token(&session).status, 202);

    let page = s.sign_in(&session);
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("Microsoft 365 connected (read-only)"),
        "{}",
        page.text()
    );
    assert_eq!(page.header("Cache-Control"), Some("no-store"));
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    assert!(page
        .header("Content-Security-Policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(s.status(&session)["status"], "ready");

    let tokens = s.token(&session);
    assert_eq!(tokens.status, 200);
    let t = tokens.json();
    for key in ["access_token", "refresh_token", "token_type", "expiry"] {
        assert!(t[key].as_str().is_some_and(|v| !v.is_empty()), "{key}: {t}");
    }
    assert_eq!(t["token_type"], "Bearer");
    // Issue 8's fields: who, by which provider, and whether the e-mail is vouched for (a
    // pinned tenant's directory vouches for its accounts' addresses).
    assert_eq!(t["provider"], "m365");
    assert_eq!(t["email"], EMAIL);
    assert_eq!(t["email_verified"], true);
    assert_eq!(t["tenant"], DEFAULT_TENANT_ID);
    assert!(t["expiry"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s.token(&session).status, 410);
    assert_eq!(s.status(&session)["status"], "consumed");
    assert_eq!(s.fake.redeemed_codes(), 1);
    assert_eq!(s.fake.graph_calls(), 1);
    // Nothing secret on the page.
    let text = page.text();
    for secret in [
        t["access_token"].as_str().unwrap(),
        t["refresh_token"].as_str().unwrap(),
        session["state"].as_str().unwrap(),
    ] {
        assert!(!text.contains(secret));
    }
}

#[test]
fn the_authorize_request_is_exactly_what_microsoft_expects() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    s.sign_in(&session);
    let sent = &s.fake.authorize_requests()[0];
    let p = |k| fake::param(sent, k).map(str::to_string);
    assert_eq!(p("response_type").as_deref(), Some("code"));
    assert_eq!(p("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(
        p("redirect_uri"),
        Some(format!("http://{}/m365/callback", s.broker.relay.addr))
    );
    assert_eq!(p("login_hint").as_deref(), Some(EMAIL));
    assert_eq!(p("prompt"), None);
    let scopes = p("scope").unwrap();
    for expected in ["offline_access", "User.Read", "Mail.Read", "Calendars.Read"] {
        assert!(scopes.split(' ').any(|s| s == expected), "{scopes}");
    }
    assert_no_write_scope(&scopes);
    // The three values are distinct and long: seeing the link gives nothing else away.
    let link_id = session["login_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let handle = session["state"].as_str().unwrap().to_string();
    let oauth_state = p("state").unwrap();
    assert!(link_id != handle && handle != oauth_state && link_id != oauth_state);
    for id in [&link_id, &handle, &oauth_state] {
        assert!(id.len() >= 22, "fewer than 128 bits: {id}");
    }
    // PKCE: the verifier the broker sent hashes to the challenge (the fake enforces it too).
    let form = &s.fake.token_requests()[0];
    let verifier = fake::param(form, "code_verifier").unwrap();
    assert_eq!(fake::pkce_challenge(verifier), p("code_challenge").unwrap());
    assert_eq!(
        fake::param(form, "client_secret"),
        None,
        "a public client sent a secret"
    );
}

fn assert_no_write_scope(scopes: &str) {
    let lower = scopes.to_lowercase();
    assert!(
        !lower.contains("write") && !lower.contains("send"),
        "write scope requested: {scopes}"
    );
}

#[test]
fn write_scopes_are_refused_everywhere() {
    let s = setup(|_| {}, &[]);
    for scopes in [
        json!("Mail.Send"),
        json!(["User.Read", "Mail.ReadWrite"]),
        json!("Calendars.ReadWrite"),
    ] {
        let res = s.create(json!({ "expected_email": EMAIL, "scopes": scopes }));
        assert_eq!(res.status, 400, "{scopes}");
        assert_eq!(
            res.json()["message"],
            "Only read-only Microsoft Graph scopes are allowed"
        );
    }
    let ok = s
        .create(json!({ "expected_email": EMAIL, "scopes": "User.Read Mail.Read" }))
        .json();
    s.click(&ok);
    for sent in s.fake.authorize_requests() {
        assert_no_write_scope(fake::param(&sent, "scope").unwrap());
    }
    let out = std::process::Command::new(support::BIN)
        .env("WK_PUBLIC_BASE_URL", "https://relay.example")
        .env("WK_M365_CLIENT_ID", "x")
        .env("WK_M365_BROKER_TOKEN", BROKER_TOKEN)
        .env("WK_M365_SCOPES", "offline_access Mail.Read Mail.Send")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WK_M365_SCOPES"));
}

#[test]
fn broken_settings_stop_start_up_naming_the_variable() {
    let base = [
        ("WK_PUBLIC_BASE_URL", "https://relay.example"),
        ("WK_M365_CLIENT_ID", "client"),
        ("WK_M365_BROKER_TOKEN", BROKER_TOKEN),
    ];
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("WK_M365_CLIENT_ID", None, "WK_M365_CLIENT_ID"),
        ("WK_M365_BROKER_TOKEN", None, "WK_M365_BROKER_TOKEN"),
        (
            "WK_M365_BROKER_TOKEN",
            Some("short"),
            "WK_M365_BROKER_TOKEN",
        ),
        (
            "WK_PUBLIC_BASE_URL",
            Some("http://relay.example"),
            "WK_PUBLIC_BASE_URL",
        ),
        (
            "WK_M365_LOGIN_BASE_URL",
            Some("http://login.example"),
            "WK_M365_LOGIN_BASE_URL",
        ),
        (
            "WK_M365_GRAPH_BASE_URL",
            Some("not a url"),
            "WK_M365_GRAPH_BASE_URL",
        ),
    ];
    for (var, value, named) in cases {
        let mut cmd = std::process::Command::new(support::BIN);
        cmd.envs(base).env_remove(var);
        if let Some(v) = value {
            cmd.env(var, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}={value:?} started");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{var}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn callers_need_the_broker_token() {
    let s = setup(|_| {}, &[]);
    let no_auth = s.broker.relay.request(
        "POST",
        "/m365/sessions",
        &[],
        br#"{"expected_email":"a@b.c"}"#,
    );
    let wrong = s.broker.relay.request(
        "POST",
        "/m365/sessions",
        &[("Authorization", "Bearer wrong-token-0123456789abcdef")],
        br#"{"expected_email":"a@b.c"}"#,
    );
    let session = s.session();
    let handle = session["state"].as_str().unwrap();
    let token = s.broker.relay.get(&format!("/token/{handle}"));
    let status = s.broker.relay.get(&format!("/status/{handle}"));
    // The refusal names the broker token, not the relay's API token.
    for refused in [no_auth, wrong, token, status] {
        assert_eq!(refused.status, 401);
        assert_eq!(refused.json()["message"], "Missing or invalid broker token");
    }
    for bad in [
        json!({}),
        json!({"expected_email": "not-an-email"}),
        json!({"expected_email": EMAIL, "force_consent": "yes"}),
    ] {
        assert_eq!(s.create(bad.clone()).status, 400, "{bad}");
    }
}

#[test]
fn handle_only_access_is_an_explicit_choice() {
    let s = setup(|_| {}, &[("OAUTH_RELAY_BROKER_HANDLE_ONLY", "true")]);
    let session = s.session();
    let handle = session["state"].as_str().unwrap();
    assert_eq!(
        s.broker.relay.get(&format!("/status/{handle}")).json()["status"],
        "pending"
    );
    s.sign_in(&session);
    assert_eq!(s.broker.relay.get(&format!("/token/{handle}")).status, 200);
    // Creating sessions still needs the token.
    assert_eq!(
        s.broker
            .relay
            .request(
                "POST",
                "/m365/sessions",
                &[],
                br#"{"expected_email":"a@b.c"}"#
            )
            .status,
        401
    );
}

#[test]
fn opening_the_link_does_not_use_it_up() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    let start = path_of(session["login_url"].as_str().unwrap());
    for _ in 0..3 {
        assert_eq!(
            s.broker.relay.get(&start).status,
            302,
            "a preview fetch used the link up"
        );
    }
    let head = s.broker.relay.request("HEAD", &start, &[], b"");
    assert_eq!(head.status, 302);
    assert!(head.header("Location").is_some() && head.body.is_empty());
    assert_eq!(s.sign_in(&session).status, 200);
    // After success the link says so instead of starting again.
    let again = s.broker.relay.get(&start);
    assert_eq!(again.status, 200);
    assert!(again.text().contains("Already connected"));
}

#[test]
fn force_consent_asks_for_the_consent_screen() {
    let s = setup(|_| {}, &[]);
    let session = s
        .create(json!({ "expected_email": EMAIL, "force_consent": true }))
        .json();
    s.sign_in(&session);
    assert_eq!(
        fake::param(&s.fake.authorize_requests()[0], "prompt"),
        Some("consent")
    );
}

#[test]
fn a_confidential_client_authenticates_and_a_missing_secret_is_explained() {
    let s = setup(|c| c.client_secret = Some("s3cret-value".into()), &[]);
    let session = s.session();
    assert_eq!(s.sign_in(&session).status, 200);
    assert_eq!(
        fake::param(&s.fake.token_requests()[0], "client_secret"),
        Some("s3cret-value")
    );

    // The same app registration, but the operator forgot WK_M365_CLIENT_SECRET.
    let s = setup(
        |c| c.client_secret = Some("s3cret-value".into()),
        &[("WK_M365_CLIENT_SECRET", "")],
    );
    let session = s.session();
    let page = s.sign_in(&session);
    assert_eq!(page.status, 502);
    assert!(page.text().contains("could not connect"));
    assert!(
        !page.text().contains("AADSTS"),
        "raw provider text on a page"
    );
    assert_eq!(s.status(&session)["reason"], "exchange_failed");
    let line = s.broker.relay.wait_for_log("callback_failed");
    assert!(
        line.contains("AADSTS7000218") && line.contains("WK_M365_CLIENT_SECRET"),
        "{line}"
    );
    assert!(!s
        .broker
        .relay
        .logs()
        .iter()
        .any(|l| l.contains("s3cret-value")));
}

/// Signs in with the fake configured by `tweak`, expecting failure `reason` and `status`.
fn fails(
    tweak: impl FnOnce(&mut FakeConfig),
    env: &[(&str, &str)],
    reason: &str,
    status: u16,
    words: &str,
) {
    let s = setup(tweak, env);
    let session = s.session();
    let page = s.sign_in(&session);
    s.broker
        .assert_failed(&session, &page, reason, status, words);
}

#[test]
fn the_person_cancels() {
    fails(
        |c| c.cancel = true,
        &[],
        "access_denied",
        200,
        "You cancelled the Microsoft 365 sign-in",
    );
}

#[test]
fn no_refresh_token_fails_closed() {
    fails(
        |c| c.omit_refresh_token = true,
        &[],
        "no_refresh_token",
        502,
        "could not connect",
    );
}

#[test]
fn graph_failure_fails_closed() {
    fails(
        |c| c.graph_fail = true,
        &[],
        "graph_failed",
        502,
        "could not connect",
    );
}

#[test]
fn the_wrong_account_fails_closed() {
    fails(
        |c| {
            c.user_mail = Some("someone.else@contoso.example".into());
            c.user_upn = "someone.else@contoso.example".into();
        },
        &[],
        "email_mismatch",
        403,
        "different Microsoft 365 account",
    );
}

#[test]
fn the_wrong_tenant_fails_closed() {
    fails(
        |c| c.user_tid = Some("99999999-9999-9999-9999-999999999999".into()),
        &[],
        "tenant_mismatch",
        403,
        "different organization",
    );
}

#[test]
fn a_failed_code_exchange_fails_closed() {
    fails(
        |c| {
            c.token_error = Some((
                400,
                "invalid_grant".into(),
                "AADSTS50011: The redirect URI does not match".into(),
            ))
        },
        &[],
        "exchange_failed",
        502,
        "could not connect",
    );
}

#[test]
fn mail_falls_back_to_the_user_principal_name_case_insensitively() {
    let s = setup(
        |c| {
            c.user_mail = None;
            c.user_upn = "Ana.Silva@Contoso.Example".into();
        },
        &[],
    );
    let session = s.session();
    assert_eq!(s.sign_in(&session).status, 200);
    assert_eq!(s.token(&session).json()["email"], EMAIL);
}

const OTHER_TENANT: &str = "99999999-9999-9999-9999-999999999999";

/// Issue 8: with `organizations` (or `common`) any tenant's admin can give any account any
/// `mail`, so an e-mail match counts only when the id_token's `xms_edov` says the domain owner
/// is verified. (Before, any tenant's account with the right `mail` was accepted.)
#[test]
fn without_a_pinned_tenant_an_email_counts_only_when_its_domain_owner_is_verified() {
    for edov in [None, Some(false)] {
        let s = setup(
            |c| {
                c.user_tid = Some(OTHER_TENANT.into());
                c.xms_edov = edov;
            },
            &[("WK_M365_TENANT_ID", "organizations")],
        );
        let session = s.session();
        let page = s.sign_in(&session);
        s.broker.assert_failed(
            &session,
            &page,
            "email_unverified",
            403,
            "does not confirm that the address belongs to it",
        );
    }
    let s = setup(
        |c| {
            c.user_tid = Some(OTHER_TENANT.into());
            c.xms_edov = Some(true);
        },
        &[("WK_M365_TENANT_ID", "organizations")],
    );
    let session = s.session();
    let page = s.sign_in(&session);
    let t = s
        .broker
        .assert_connected(&session, &page, "Microsoft 365 connected (read-only)");
    assert_eq!(
        (t["tenant"].as_str(), t["email_verified"].as_bool()),
        (Some(OTHER_TENANT), Some(true))
    );
    // The account's stable id needs no e-mail at all.
    let s = setup(
        |c| c.user_tid = Some(OTHER_TENANT.into()),
        &[("WK_M365_TENANT_ID", "common")],
    );
    let oid = s.fake.config().user_oid;
    let session = s
        .create(json!({ "expected_subject": format!("{OTHER_TENANT}/{oid}") }))
        .json();
    assert_eq!(s.sign_in(&session).status, 200);
    let t = s.token(&session).json();
    assert_eq!(t["email_verified"], false);
    assert_eq!(t["subject"], format!("{OTHER_TENANT}/{oid}"));
}

/// Issue 13, item 9: `xms_edov` vouches for the id_token's `email` claim, not for Graph's `mail`
/// (which a tenant admin sets to anything). When the two differ, only the id_token's address is
/// verified: an expected e-mail equal to Graph's `mail` fails closed as unverified, one equal to
/// the vouched address succeeds.
#[test]
fn xms_edov_vouches_for_the_id_tokens_email_not_for_graphs_mail() {
    const VOUCHED: &str = "ana.x@vouched.example";
    let s = setup(
        |c| {
            c.user_tid = Some(OTHER_TENANT.into());
            c.xms_edov = Some(true);
            c.user_mail = Some(EMAIL.into());
            c.user_email_claim = Some(VOUCHED.into());
        },
        &[("WK_M365_TENANT_ID", "organizations")],
    );
    // Graph's mail is the expected address: not verified, whatever xms_edov says.
    let session = s.session();
    let page = s.sign_in(&session);
    s.broker.assert_failed(
        &session,
        &page,
        "email_unverified",
        403,
        "does not confirm that the address belongs to it",
    );
    let line = s.broker.audit_line(&session, "callback_failed");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("vouches only for a***@vouched.example"),
        "{line}"
    );
    // Without a pinned tenant the broker asks for the `email` scope: the claim xms_edov is about.
    let scope = fake::param(&s.fake.authorize_requests()[0], "scope")
        .unwrap()
        .to_string();
    assert!(scope.split(' ').any(|x| x == "email"), "{scope}");
    // The vouched address is the expected one: connected, and that is the e-mail reported.
    let session = s.create(json!({ "expected_email": VOUCHED })).json();
    let page = s.sign_in(&session);
    let t = s
        .broker
        .assert_connected(&session, &page, "Microsoft 365 connected (read-only)");
    assert_eq!(
        (t["email"].as_str(), t["email_verified"].as_bool()),
        (Some(VOUCHED), Some(true))
    );
}

#[test]
fn the_subject_is_the_tenant_and_object_id() {
    let s = setup(|_| {}, &[]);
    let oid = s.fake.config().user_oid;
    let subject = format!("{DEFAULT_TENANT_ID}/{oid}");
    let session = s.session();
    s.sign_in(&session);
    let t = s.token(&session).json();
    assert_eq!(t["subject"], subject.as_str());
    assert_eq!(t["tenant"], DEFAULT_TENANT_ID);
    assert_eq!(t["provider"], "m365");
    let session = s
        .create(json!({ "expected_subject": subject, "expected_email": EMAIL }))
        .json();
    assert_eq!(session["expected_subject"], subject.as_str());
    assert_eq!(s.sign_in(&session).status, 200);
    let session = s
        .create(json!({ "expected_subject": format!("{DEFAULT_TENANT_ID}/someone-else") }))
        .json();
    let page = s.sign_in(&session);
    s.broker.assert_failed(
        &session,
        &page,
        "subject_mismatch",
        403,
        "different Microsoft 365 account",
    );
}

/// Issue 8: a tenant given by domain is resolved to its GUID (the `issuer` of its OpenID
/// configuration) at start-up, so `tid` is checked. (Before, a domain pinned nothing.)
#[test]
fn a_tenant_given_by_domain_is_resolved_and_pinned() {
    let domain = "contoso.onmicrosoft.com";
    let s = setup(
        |c| c.tenant_domains = vec![domain.into()],
        &[("WK_M365_TENANT_ID", domain)],
    );
    let line = s.broker.relay.wait_for_log("tenant_resolved");
    assert!(line.contains(DEFAULT_TENANT_ID), "{line}");
    assert_eq!(s.fake.discovery_fetches(), 1);
    let session = s.session();
    assert_eq!(s.sign_in(&session).status, 200);
    assert_eq!(s.token(&session).json()["tenant"], DEFAULT_TENANT_ID);
    // The sign-in went to the domain's endpoints, as configured.
    let sent = s.fake.authorize_requests().len();
    assert_eq!(sent, 1);
    s.fake.set(|c| c.user_tid = Some(OTHER_TENANT.into()));
    let session = s.session();
    let page = s.sign_in(&session);
    s.broker.assert_failed(
        &session,
        &page,
        "tenant_mismatch",
        403,
        "different organization",
    );
    assert_eq!(s.fake.discovery_fetches(), 1, "resolved once");
}

/// The same provider kind configured the general way (OAUTH_RELAY_PROVIDERS), beside the
/// WK_M365_* one: POST /sessions, /login links, /login/{provider}/callback. A response brought
/// to the other provider's callback, or naming another issuer, is a mix-up: refused before its
/// code is used.
#[test]
fn a_second_microsoft_provider_by_name_and_mix_ups_refused() {
    let planned = Planned::new();
    let fake = FakeMicrosoft::start_with(FakeConfig {
        redirect_uris: vec![
            format!("{}/m365/callback", planned.public),
            planned.callback("work"),
        ],
        ..FakeConfig::default()
    });
    let base = fake.base_url();
    let mut env: Vec<(String, String)> = [
        ("WK_M365_CLIENT_ID", "test-client-id"),
        ("WK_M365_TENANT_ID", DEFAULT_TENANT_ID),
        ("WK_M365_LOGIN_BASE_URL", &base),
        ("WK_M365_GRAPH_BASE_URL", &base),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(support::broker::providers_env(&[(
        "work",
        vec![
            ("KIND", "microsoft".into()),
            ("CLIENT_ID", "test-client-id".into()),
            ("TENANT", DEFAULT_TENANT_ID.into()),
            ("LOGIN_URL", base.clone()),
            ("API_URL", base.clone()),
            ("DISPLAY_NAME", "Work mail".into()),
        ],
    )]));
    let work_callback = planned.callback("work");
    let broker = planned.start(&env);
    let redirect_of = |authorize: &str| {
        let res = get_url(authorize);
        assert_eq!(res.status, 302, "{}", res.text());
        res.header("Location").unwrap().to_string()
    };
    let session = broker.session("work", json!({ "expected_email": EMAIL }));
    let page = broker.sign_in(&session, redirect_of);
    broker.assert_connected(&session, &page, "Work mail connected (read-only)");
    assert_eq!(
        fake::param(&fake.authorize_requests()[0], "redirect_uri"),
        Some(work_callback.as_str())
    );

    // Mixed up: the work sign-in's response arrives at m365's callback.
    let session = broker.session("work", json!({ "expected_email": EMAIL }));
    let redirect = redirect_of(&broker.open(&session));
    let mixed = redirect.replace("/login/work/callback", "/m365/callback");
    let redeemed = fake.redeemed_codes();
    let page = broker.arrive(&mixed);
    broker.assert_failed(&session, &page, "issuer_mismatch", 502, "could not connect");
    assert_eq!(
        fake.redeemed_codes(),
        redeemed,
        "a mixed-up code was redeemed"
    );

    // Another issuer named in the response (RFC 9207).
    let session = broker.session("work", json!({ "expected_email": EMAIL }));
    let redirect = redirect_of(&broker.open(&session));
    let page = broker.arrive(&format!("{redirect}&iss=https%3A%2F%2Faccounts.google.com"));
    assert_eq!(page.status, 502);
    assert_eq!(broker.status(&session)["reason"], "issuer_mismatch");
    assert_eq!(fake.redeemed_codes(), redeemed);

    // Unknown providers: 400 for sessions, 404 for their callbacks.
    let res = broker.create(
        "/sessions",
        &json!({ "provider": "nope", "expected_email": EMAIL }),
    );
    assert_eq!(res.status, 400);
    assert!(res.json()["message"]
        .as_str()
        .unwrap()
        .contains("Unknown provider"));
    assert_eq!(
        broker
            .relay
            .get("/login/nope/callback?state=x&code=y")
            .status,
        404
    );
    // /m365/sessions serves only m365.
    let res = broker.create(
        "/m365/sessions",
        &json!({ "provider": "work", "expected_email": EMAIL }),
    );
    assert_eq!(res.status, 400);
}

#[test]
fn bad_states_fail_closed_with_their_own_reason() {
    let s = setup(|_| {}, &[]);
    let missing = s.broker.relay.get("/m365/callback?code=x");
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("not valid"));
    let unknown = s
        .broker
        .relay
        .get("/m365/callback?code=x&state=never-issued");
    assert_eq!(unknown.status, 404);
    // Reuse: the same redirect again after success changes nothing and reassures the person.
    let session = s.session();
    let callback = s.click(&session);
    assert_eq!(s.broker.relay.get(&callback).status, 200);
    let reload = s.broker.relay.get(&callback);
    assert!(
        reload.text().contains("Already connected"),
        "{}",
        reload.text()
    );
    assert_eq!(
        s.fake.redeemed_codes(),
        1,
        "a reused state redeemed a code again"
    );
    assert_eq!(s.token(&session).status, 200);
    for reason in ["state_missing", "state_unknown", "state_reused"] {
        s.broker.relay.wait_for_log(reason);
    }
}

#[test]
fn an_expired_session_fails_closed() {
    let s = setup(|_| {}, &[("OAUTH_RELAY_TTL_SECS", "1")]);
    let session = s.session();
    let callback = s.click(&session);
    std::thread::sleep(Duration::from_millis(1200));
    let page = s.broker.relay.get(&callback);
    assert!(matches!(page.status, 404 | 410), "{}", page.status);
    assert!(page.text().contains("expired") || page.text().contains("not valid"));
    assert_eq!(s.fake.redeemed_codes(), 0);
    assert_eq!(s.token(&session).status, 404);
}

#[test]
fn two_callbacks_racing_for_one_state_yield_one_exchange() {
    let s = setup(|c| c.token_delay = Duration::from_millis(300), &[]);
    for _ in 0..5 {
        let session = s.session();
        let callback = s.click(&session);
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| s.broker.relay.get(&callback)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().status).collect()
        });
        let successes = statuses.iter().filter(|s| **s == 200).count();
        // One exchange; the others are told the link was already used (409) or, if they came
        // after the winner finished, that it is already connected (200).
        assert!(
            successes >= 1 && statuses.iter().all(|s| *s == 200 || *s == 409),
            "{statuses:?}"
        );
        assert_eq!(s.token(&session).status, 200);
        assert_eq!(s.token(&session).status, 410);
    }
    assert_eq!(s.fake.redeemed_codes(), 5);
    assert_eq!(
        s.fake.token_requests().len(),
        5,
        "a state was exchanged twice"
    );
}

#[test]
fn a_slow_identity_provider_holds_up_nothing_else() {
    let s = setup(
        |c| c.token_delay = Duration::from_secs(3),
        &[("OAUTH_RELAY_WORKERS", "2")],
    );
    let sessions: Vec<Value> = (0..6).map(|_| s.session()).collect();
    let callbacks: Vec<String> = sessions.iter().map(|x| s.click(x)).collect();
    std::thread::scope(|scope| {
        let pending: Vec<_> = callbacks
            .iter()
            .map(|c| scope.spawn(|| s.broker.relay.get(c)))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // Six exchanges are stuck and only two workers exist; the workers are still free.
        for _ in 0..20 {
            assert_eq!(s.broker.relay.get("/health").status, 200);
        }
        assert!(
            pending.iter().all(|h| !h.is_finished()),
            "the provider was not slow"
        );
        for h in pending {
            assert_eq!(h.join().unwrap().status, 200);
        }
    });
}

#[test]
fn an_identity_provider_that_never_answers_times_out() {
    let s = setup(
        |c| c.token_delay = Duration::from_secs(30),
        &[("OAUTH_RELAY_EXCHANGE_TIMEOUT_SECS", "1")],
    );
    let session = s.session();
    let page = s.sign_in(&session);
    assert_eq!(page.status, 502);
    assert_eq!(s.status(&session)["reason"], "exchange_failed");
}

#[test]
fn token_long_poll_is_answered_when_the_sign_in_completes() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    let handle = session["state"].as_str().unwrap().to_string();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            s.broker
                .relay
                .get_auth(&format!("/token/{handle}?wait=30"), BROKER_TOKEN)
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished());
        s.sign_in(&session);
        let res = waiter.join().unwrap();
        assert_eq!(res.status, 200);
        assert!(res.json()["refresh_token"].is_string());
    });
    let failed = setup(|c| c.cancel = true, &[]);
    let session = failed.session();
    let handle = session["state"].as_str().unwrap().to_string();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            failed
                .broker
                .relay
                .get_auth(&format!("/token/{handle}?wait=30"), BROKER_TOKEN)
        });
        std::thread::sleep(Duration::from_millis(200));
        failed.sign_in(&session);
        assert_eq!(waiter.join().unwrap().status, 409);
    });
}

#[test]
fn pages_speak_brazilian_portuguese_when_asked() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    let callback = s.click(&session);
    let page = s.broker.relay.request(
        "GET",
        &callback,
        &[("Accept-Language", "pt-BR,pt;q=0.9,en;q=0.5")],
        b"",
    );
    assert!(
        page.text()
            .contains("Microsoft 365 conectado (somente leitura)"),
        "{}",
        page.text()
    );
    assert!(page.text().contains("lang=\"pt-BR\""));
    let unknown = s.broker.relay.request(
        "GET",
        "/m365/start/nope",
        &[("Accept-Language", "pt-BR")],
        b"",
    );
    assert!(unknown.text().contains("Este link não é válido"));
    let cancelled = setup(|c| c.cancel = true, &[]);
    let session = cancelled.session();
    let callback = cancelled.click(&session);
    let page =
        cancelled
            .broker
            .relay
            .request("GET", &callback, &[("Accept-Language", "pt-BR")], b"");
    assert!(page
        .text()
        .contains("Você cancelou o login da conta Microsoft 365"));
}

#[test]
fn audit_events_are_logged_without_secrets() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    s.sign_in(&session);
    let tokens = s.token(&session).json();
    for event in [
        "link_created",
        "link_opened",
        "callback_succeeded",
        "tokens_retrieved",
    ] {
        s.broker
            .relay
            .wait_for_log(&format!("\"event\":\"{event}\""));
    }
    let form = &s.fake.token_requests()[0];
    let secrets = [
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
        fake::param(form, "code").unwrap(),
        fake::param(form, "code_verifier").unwrap(),
        session["state"].as_str().unwrap(),
        BROKER_TOKEN,
        EMAIL,
    ];
    for line in s.broker.relay.logs() {
        for secret in secrets {
            assert!(!line.contains(secret), "secret in log: {line}");
        }
    }
    assert!(s
        .broker
        .relay
        .logs()
        .iter()
        .any(|l| l.contains("a***@contoso.example")));
}

#[test]
fn the_login_link_command_does_it_all_in_one() {
    use std::io::{BufRead, BufReader};
    let s = setup(|_| {}, &[]);
    let mut child = std::process::Command::new(support::BIN)
        .args(["login-link", EMAIL, "--wait", "--timeout-secs", "60"])
        .env("WK_CALLBACK_SERVER", s.broker.relay.url(""))
        .env("WK_M365_BROKER_TOKEN", BROKER_TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let login_url = lines.next().unwrap().unwrap();
    let login_url = login_url
        .strip_prefix("login_url: ")
        .expect("first line is the link")
        .to_string();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        format!("expected_email: {EMAIL}")
    );
    assert!(lines.next().unwrap().unwrap().starts_with("expires_at: "));
    s.sign_in(&json!({ "login_url": login_url }));
    let tokens: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(tokens["access_token"].is_string() && tokens["refresh_token"].is_string());
    assert!(child.wait().unwrap().success());
}

/// Runs Debian's headless Chromium on `url`, following every redirect, and returns the DOM of
/// the page it ends on. Fails (never skips) when Chromium is missing: scripts/test.sh installs it.
fn chromium_dom(url: &str, extra: &[&str]) -> String {
    let profile =
        std::env::temp_dir().join(format!("oauth-relay-chromium-{}", support::free_port()));
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .args(["--dump-dom", url])
        .output()
        .expect("chromium is not installed: run scripts/test.sh, which installs it");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_real_browser_goes_from_the_link_to_the_success_page() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    let dom = chromium_dom(session["login_url"].as_str().unwrap(), &[]);
    assert!(dom.contains("Microsoft 365 connected (read-only)"), "{dom}");
    // The browser went through the fake Microsoft sign-in exactly once.
    assert_eq!(s.fake.authorize_requests().len(), 1);
    assert_eq!(s.fake.redeemed_codes(), 1);
    let tokens = s.token(&session);
    assert_eq!(tokens.status, 200);
    assert!(!dom.contains(tokens.json()["access_token"].as_str().unwrap()));
    assert_eq!(s.token(&session).status, 410);

    let session = s.session();
    let dom = chromium_dom(
        session["login_url"].as_str().unwrap(),
        &["--accept-lang=pt-BR"],
    );
    assert!(
        dom.contains("Microsoft 365 conectado (somente leitura)"),
        "{dom}"
    );
}
