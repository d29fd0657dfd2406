//! The broker with GitHub (kind `github`) end to end: the real binary against the fake GitHub
//! (tests/support/fake_github.rs), which enforces the exact callback URL, state and S256 PKCE,
//! one-time codes bound to client, redirect URI and verifier, client authentication, JSON only
//! when asked, errors with HTTP 200, a User-Agent on API calls and `user:email` for
//! `/user/emails`. Success by e-mail and by id, and every way it must fail closed.

use crate::support;

use support::fake_github;

use fake_github::{FakeGitHub, FakeGitHubConfig, GitHubEmail, GitHubUser};
use serde_json::{json, Value};
use support::broker::{providers_env, start_up_fails, Broker, Planned};
use support::get_url;

const EMAIL: &str = "ana.silva@example.com";
const ID: u64 = 5_830_144;

struct Setup {
    fake: FakeGitHub,
    broker: Broker,
}

/// The fake GitHub and a broker with it as provider `github`. `tweak` adjusts the fake;
/// `settings` adds or overrides the provider's settings.
fn setup(tweak: impl FnOnce(&mut FakeGitHubConfig), settings: &[(&str, &str)]) -> Setup {
    let planned = Planned::new();
    let mut cfg = FakeGitHubConfig {
        redirect_uri: planned.callback("github"),
        ..FakeGitHubConfig::default()
    };
    tweak(&mut cfg);
    let fake = FakeGitHub::start_with(cfg.clone());
    let api = format!("{}{}", fake.base_url(), cfg.api_prefix);
    let mut vars: Vec<(&str, String)> = vec![
        ("KIND", "github".into()),
        ("CLIENT_ID", cfg.client_id.clone()),
        ("CLIENT_SECRET", cfg.client_secret.clone()),
        ("AUTHORIZE_URL", fake.authorize_url()),
        ("TOKEN_URL", fake.token_url()),
        ("API_URL", api),
    ];
    for (k, v) in settings {
        vars.retain(|(key, _)| key != k);
        vars.push((k, v.to_string()));
    }
    let broker = planned.start(&providers_env(&[("github", vars)]));
    Setup { fake, broker }
}

/// The person at the authorize URL signs in as the fake's configured user.
fn browse(authorize: &str) -> String {
    let res = get_url(authorize);
    assert_eq!(res.status, 302, "the fake refused: {}", res.text());
    res.header("Location").unwrap().to_string()
}

impl Setup {
    fn session(&self, who: Value) -> Value {
        self.broker.session("github", who)
    }

    fn sign_in(&self, session: &Value) -> support::HttpResponse {
        self.broker.sign_in(session, browse)
    }
}

#[test]
fn a_person_signs_in_with_github_and_the_caller_gets_the_tokens_once() {
    let s = setup(|_| {}, &[]);
    let session = s.session(json!({ "expected_email": EMAIL }));
    let page = s.sign_in(&session);
    let t = s
        .broker
        .assert_connected(&session, &page, "GitHub connected");
    assert!(!page.text().contains("read-only"));
    assert_eq!(t["subject"], ID.to_string());
    assert_eq!(t["email"], EMAIL);
    assert_eq!(t["email_verified"], true);
    // An OAuth app's token: no refresh token, no expiry, and GitHub has no tenants.
    assert!(t["refresh_token"].is_null() && t["expiry"].is_null(), "{t}");
    assert!(t.get("tenant").is_none(), "{t}");
    assert!(t["access_token"].as_str().unwrap().starts_with("gho_"));

    // What GitHub was sent: PKCE, the secret in the form, JSON asked for (the fake answers
    // form-encoded otherwise, which the broker refuses), and the API headers GitHub wants.
    let authorize = &s.fake.authorize_requests()[0];
    let p = |k| fake_github::param(authorize, k);
    assert_eq!(p("code_challenge_method"), Some("S256"));
    assert_eq!(p("scope"), Some("read:user user:email"));
    assert_eq!(
        p("redirect_uri"),
        Some(s.fake.config().redirect_uri.as_str())
    );
    let form = &s.fake.token_requests()[0];
    assert_eq!(
        fake_github::param(form, "client_secret"),
        Some(fake_github::DEFAULT_CLIENT_SECRET)
    );
    assert!(fake_github::param(form, "code_verifier").is_some());
    for api in s.fake.api_requests() {
        assert!(api
            .header("user-agent")
            .unwrap()
            .starts_with("oauth-relay/"));
        assert_eq!(api.header("accept"), Some("application/vnd.github+json"));
    }
    assert_eq!((s.fake.user_calls(), s.fake.emails_calls()), (1, 1));
}

#[test]
fn a_session_can_name_the_account_by_its_github_id() {
    let s = setup(|_| {}, &[]);
    let session = s.session(json!({ "expected_subject": ID.to_string() }));
    assert_eq!(session["expected_email"], Value::Null);
    s.broker
        .assert_connected(&session, &s.sign_in(&session), "GitHub connected");
    let session = s.session(json!({ "expected_subject": "1" }));
    let page = s.sign_in(&session);
    s.broker.assert_failed(
        &session,
        &page,
        "subject_mismatch",
        403,
        "different GitHub account",
    );
}

#[test]
fn another_account_fails_closed() {
    let s = setup(|_| {}, &[]);
    let session = s.session(json!({ "expected_email": EMAIL }));
    let bob = GitHubUser::new(7, "bob", "bob@example.com");
    let page = s
        .broker
        .sign_in(&session, |url| s.fake.sign_in(url, &bob).unwrap());
    s.broker.assert_failed(
        &session,
        &page,
        "email_mismatch",
        403,
        "different GitHub account",
    );
}

#[test]
fn only_a_verified_primary_address_counts() {
    // The expected address is the primary one, but GitHub has not verified it.
    let s = setup(
        |c| c.user.emails = vec![GitHubEmail::new(EMAIL, true, false)],
        &[],
    );
    let session = s.session(json!({ "expected_email": EMAIL }));
    let page = s.sign_in(&session);
    s.broker
        .assert_failed(&session, &page, "email_unverified", 403, "not verified");
    // A verified address that is not the primary one, or the public profile address, is not
    // the account's address.
    let s = setup(
        |c| {
            c.user.emails = vec![
                GitHubEmail::new("primary@example.com", true, true),
                GitHubEmail::new(EMAIL, false, true),
            ];
            c.user.public_email = Some(EMAIL.into());
        },
        &[],
    );
    let session = s.session(json!({ "expected_email": EMAIL }));
    let page = s.sign_in(&session);
    s.broker.assert_failed(
        &session,
        &page,
        "email_mismatch",
        403,
        "different GitHub account",
    );
}

#[test]
fn an_error_answered_with_http_200_fails_closed() {
    let s = setup(
        |c| {
            c.token_error = Some((
                "bad_verification_code".into(),
                "The code passed is incorrect or expired.".into(),
            ))
        },
        &[],
    );
    let session = s.session(json!({ "expected_email": EMAIL }));
    let page = s.sign_in(&session);
    s.broker
        .assert_failed(&session, &page, "exchange_failed", 502, "could not connect");
    let line = s.broker.audit_line(&session, "callback_failed");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("bad_verification_code"),
        "{line}"
    );
    assert!(
        line["fix"].as_str().unwrap().contains("10 minutes"),
        "{line}"
    );
    assert!(!page.text().contains("bad_verification_code"));
}

#[test]
fn the_person_cancels() {
    let s = setup(|_| {}, &[]);
    let session = s.session(json!({ "expected_email": EMAIL }));
    let page = s
        .broker
        .sign_in(&session, |url| s.fake.decline(url).unwrap());
    s.broker.assert_failed(
        &session,
        &page,
        "access_denied",
        200,
        "You cancelled the GitHub sign-in",
    );
}

#[test]
fn without_user_email_the_profile_check_fails_with_a_hint() {
    let s = setup(|_| {}, &[("SCOPES", "read:user")]);
    let session = s.session(json!({ "expected_email": EMAIL }));
    let page = s.sign_in(&session);
    s.broker
        .assert_failed(&session, &page, "profile_failed", 502, "could not connect");
    let line = s.broker.audit_line(&session, "callback_failed");
    assert!(
        line["fix"]
            .as_str()
            .unwrap()
            .contains("OAUTH_RELAY_PROVIDER_GITHUB_SCOPES"),
        "{line}"
    );
}

#[test]
fn session_scopes_must_be_allowed() {
    let s = setup(
        |_| {},
        &[("ALLOWED_SCOPES", "read:user user:email repo:status")],
    );
    let res = s.broker.create(
        "/sessions",
        &json!({ "provider": "github", "expected_email": EMAIL, "scopes": ["repo"] }),
    );
    assert_eq!(res.status, 400);
    assert!(
        res.json()["message"]
            .as_str()
            .unwrap()
            .contains("allowed scopes"),
        "{}",
        res.text()
    );
    let session = s.session(json!({
        "expected_email": EMAIL, "scopes": "read:user user:email repo:status"
    }));
    assert_eq!(s.sign_in(&session).status, 200);
    assert_eq!(
        fake_github::param(&s.fake.authorize_requests()[0], "scope"),
        Some("read:user user:email repo:status")
    );
}

#[test]
fn github_enterprise_is_a_matter_of_urls() {
    let s = setup(|c| c.api_prefix = "/api/v3".into(), &[]);
    let session = s.session(json!({ "expected_email": EMAIL }));
    s.broker
        .assert_connected(&session, &s.sign_in(&session), "GitHub connected");
    assert!(s
        .fake
        .api_requests()
        .iter()
        .all(|r| r.url.starts_with("/api/v3/")));
}

#[test]
fn a_response_that_names_an_issuer_did_not_come_from_github() {
    let s = setup(|_| {}, &[]);
    let session = s.session(json!({ "expected_email": EMAIL }));
    let redirect = browse(&s.broker.open(&session));
    let page = s
        .broker
        .arrive(&format!("{redirect}&iss=https%3A%2F%2Faccounts.google.com"));
    s.broker
        .assert_failed(&session, &page, "issuer_mismatch", 502, "could not connect");
    assert_eq!(s.fake.redeemed_codes(), 0);
}

#[test]
fn a_github_provider_without_a_secret_does_not_start() {
    let e = start_up_fails(&[
        (
            "OAUTH_RELAY_PUBLIC_URL".into(),
            "https://relay.example".into(),
        ),
        (
            "OAUTH_RELAY_BROKER_TOKEN".into(),
            "broker-token-0123456789abcdef".into(),
        ),
        ("OAUTH_RELAY_PROVIDERS".into(), "gh".into()),
        ("OAUTH_RELAY_PROVIDER_GH_KIND".into(), "github".into()),
        ("OAUTH_RELAY_PROVIDER_GH_CLIENT_ID".into(), "x".into()),
    ]);
    assert!(e.contains("OAUTH_RELAY_PROVIDER_GH_CLIENT_SECRET"), "{e}");
}
