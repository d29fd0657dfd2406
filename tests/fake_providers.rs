//! Tests of the fake GitHub and the fake Google used by the broker tests, and of the
//! authorization-server core under every fake (support/fake_as.rs): each fake's enforcement and
//! quirks, each provider's refresh-token rule, the counters, injected faults and revocation,
//! all over plain HTTP.

use crate::support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};
use support::fake_as::{Fault, FaultKind, RefreshPolicy, Rotation};
use support::fake_client::{
    agent_with, basic, get, get_bearer, merged, post_form, send, try_post_form, url_with, Answer,
};
use support::fake_github::{self as gh, FakeGitHub, FakeGitHubConfig, GitHubEmail, GitHubUser};
use support::fake_google::{self as go, FakeGoogle, FakeGoogleConfig, GoogleUser, Tamper};

/// Authorize-parameter overrides: `(name, Some(value))` replaces, `(name, None)` removes.
type Overrides<'a> = &'a [(&'a str, Option<&'a str>)];

const REDIRECT: &str = "http://127.0.0.1:9999/broker/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const STATE: &str = "st-ä/+= 1";
const JSON: (&str, &str) = ("Accept", "application/json");

/// The code of a successful sign-in redirect, which carries the state.
fn code_of(location: &str) -> String {
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    let params = gh::query_params(location);
    assert_eq!(gh::param(&params, "state"), Some(STATE));
    gh::param(&params, "code").expect("code").to_string()
}

fn str_of<'a>(j: &'a Value, key: &str) -> &'a str {
    j[key].as_str().unwrap_or_else(|| panic!("no {key} in {j}"))
}

// ---------------------------------------------------------------------------------------------
// GitHub

fn github() -> FakeGitHub {
    FakeGitHub::start_with(FakeGitHubConfig {
        redirect_uri: REDIRECT.into(),
        ..FakeGitHubConfig::default()
    })
}

fn gh_authorize_url(fake: &FakeGitHub, overrides: Overrides) -> String {
    let challenge = gh::pkce_challenge(VERIFIER);
    let defaults = [
        ("client_id", gh::DEFAULT_CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("scope", "read:user user:email"),
        ("state", STATE),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    url_with(&fake.authorize_url(), &defaults, overrides)
}

/// The configured user signs in: the code.
fn gh_sign_in(fake: &FakeGitHub, overrides: Overrides) -> String {
    let url = gh_authorize_url(fake, overrides);
    code_of(&fake.sign_in(&url, &fake.config().user).unwrap())
}

fn gh_post(fake: &FakeGitHub, defaults: &[(&str, &str)], extra: &[(&str, &str)]) -> Answer {
    let mut pairs = vec![
        ("client_id", gh::DEFAULT_CLIENT_ID),
        ("client_secret", gh::DEFAULT_CLIENT_SECRET),
    ];
    pairs.extend_from_slice(defaults);
    post_form(&fake.token_url(), &merged(&pairs, extra), &[JSON])
}

fn gh_redeem(fake: &FakeGitHub, code: &str, extra: &[(&str, &str)]) -> Answer {
    let defaults = [
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    gh_post(fake, &defaults, extra)
}

fn gh_refresh(fake: &FakeGitHub, refresh_token: &str) -> Value {
    let defaults = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    gh_post(fake, &defaults, &[]).json()
}

/// Signs in the default user and returns an access token (JSON answer).
fn gh_token(fake: &FakeGitHub, scope: &str) -> String {
    let code = gh_sign_in(fake, &[("scope", Some(scope))]);
    str_of(&gh_redeem(fake, &code, &[]).json(), "access_token").to_string()
}

/// A GitHub App's tokens for the configured user.
fn gh_app_tokens(fake: &FakeGitHub) -> Value {
    fake.set(|c| c.github_app = true);
    let code = gh_sign_in(fake, &[]);
    gh_redeem(fake, &code, &[]).json()
}

#[test]
fn github_web_flow_answers_form_encoded_unless_json_is_accepted() {
    let fake = github();
    // The browser fetches the authorize URL: the configured user signs in at once.
    let a = get(
        &gh_authorize_url(&fake, &[("login", Some("ana-silva"))]),
        &[],
    );
    assert_eq!(a.status, 302, "{}", a.body);
    let code = code_of(&a.location().unwrap());
    assert_eq!((code.len(), fake.issued_codes()), (20, 1));
    let recorded = &fake.authorize_requests()[0];
    assert_eq!(gh::param(recorded, "login"), Some("ana-silva"));
    assert_eq!(gh::param(recorded, "code_challenge_method"), Some("S256"));

    // No Accept: application/json -> form-encoded, GitHub's default.
    let pairs = [
        ("client_id", gh::DEFAULT_CLIENT_ID),
        ("client_secret", gh::DEFAULT_CLIENT_SECRET),
        ("code", &code),
        ("code_verifier", VERIFIER),
    ];
    let t = post_form(&fake.token_url(), &pairs, &[]);
    assert_eq!(t.status, 200);
    assert!(t
        .content_type()
        .starts_with("application/x-www-form-urlencoded"));
    let form = t.form();
    let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["access_token", "scope", "token_type"]);
    let token = gh::param(&form, "access_token").unwrap();
    assert!(token.starts_with("gho_") && token.len() == 40, "{token}");
    assert_eq!(gh::param(&form, "scope"), Some("read:user,user:email"));
    assert_eq!(gh::param(&form, "token_type"), Some("bearer"));
    assert_eq!(fake.redeemed_codes(), 1);
    assert_eq!(
        gh::param(&fake.token_requests()[0], "code_verifier"),
        Some(VERIFIER)
    );

    // Accept: application/json -> JSON; an OAuth app gets no refresh token and no expiry.
    let t = gh_redeem(&fake, &gh_sign_in(&fake, &[]), &[]);
    assert!(t.content_type().starts_with("application/json"));
    let j = t.json();
    assert!(str_of(&j, "access_token").starts_with("gho_"));
    assert_eq!(
        (&j["token_type"], &j["scope"]),
        (&json!("bearer"), &json!("read:user,user:email"))
    );
    assert!(j.get("refresh_token").is_none() && j.get("expires_in").is_none());
    assert_eq!(fake.token_calls(), 2);
}

#[test]
fn github_token_errors_are_http_200_with_error_fields() {
    let fake = github();
    let code = gh_sign_in(&fake, &[]);
    let check = |a: &Answer, error: &str| {
        assert_eq!(a.status, 200, "GitHub answers errors with 200: {}", a.body);
        let j = a.json();
        assert_eq!(j["error"], error, "{}", a.body);
        assert!(j["error_description"].is_string() && j.get("access_token").is_none());
        assert!(str_of(&j, "error_uri").starts_with("https://docs.github.com/"));
    };
    let other_verifier = gh::pkce_verifier();
    for (extra, error) in [
        (("client_secret", "wrong"), "incorrect_client_credentials"),
        (("client_secret", ""), "incorrect_client_credentials"),
        (
            ("client_id", "Ov23liSomeoneElse000"),
            "incorrect_client_credentials",
        ),
        (("code", "0123456789abcdef0123"), "bad_verification_code"),
        (
            ("redirect_uri", "http://127.0.0.1:9999/other"),
            "redirect_uri_mismatch",
        ),
        (("code_verifier", ""), "bad_code_verifier"),
        (("code_verifier", &other_verifier), "bad_code_verifier"),
        (("grant_type", "password"), "unsupported_grant_type"),
    ] {
        check(&gh_redeem(&fake, &code, &[extra]), error);
    }
    // Errors are form-encoded too without Accept: application/json.
    let form = post_form(&fake.token_url(), &[("code", &code)], &[]);
    assert_eq!(form.status, 200);
    assert_eq!(
        gh::param(&form.form(), "error"),
        Some("incorrect_client_credentials")
    );
    assert_eq!(fake.redeemed_codes(), 0);

    // The failures left the code usable; HTTP Basic authenticates the client as well as the
    // form does, and the code is one-time.
    let auth = basic(gh::DEFAULT_CLIENT_ID, gh::DEFAULT_CLIENT_SECRET);
    let pairs = [
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let ok = post_form(&fake.token_url(), &pairs, &[JSON, ("Authorization", &auth)]);
    assert!(ok.json()["access_token"].is_string(), "{}", ok.body);
    check(&gh_redeem(&fake, &code, &[]), "bad_verification_code");

    // redirect_uri is optional at the token endpoint (GitHub's rule).
    let ok = gh_redeem(&fake, &gh_sign_in(&fake, &[]), &[("redirect_uri", "")]);
    assert!(ok.json()["access_token"].is_string(), "{}", ok.body);

    // Codes expire.
    fake.set(|c| c.code_lifetime = Duration::ZERO);
    check(
        &gh_redeem(&fake, &gh_sign_in(&fake, &[]), &[]),
        "bad_verification_code",
    );

    // Injected errors come the same way.
    fake.set(|c| {
        c.code_lifetime = Duration::from_secs(600);
        let e = "The user must have a verified primary email.";
        c.token_error = Some(("unverified_user_email".into(), e.into()));
    });
    check(
        &gh_redeem(&fake, &gh_sign_in(&fake, &[]), &[]),
        "unverified_user_email",
    );
}

#[test]
fn github_authorize_enforcement() {
    let fake = github();
    let user = fake.config().user;

    // An unknown application: a 404 page, no redirect.
    for client_id in [Some("Ov23liSomeoneElse000"), None] {
        let url = gh_authorize_url(&fake, &[("client_id", client_id)]);
        let a = get(&url, &[]);
        assert_eq!((a.status, a.location()), (404, None), "{url}");
        assert_eq!(fake.sign_in(&url, &user).unwrap_err().status, 404);
    }

    // A redirect_uri other than the registered one is reported to the registered callback.
    let other = Some("http://127.0.0.1:9999/broker/callback/");
    let location = fake
        .sign_in(&gh_authorize_url(&fake, &[("redirect_uri", other)]), &user)
        .unwrap();
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    let params = gh::query_params(&location);
    assert_eq!(gh::param(&params, "error"), Some("redirect_uri_mismatch"));
    assert_eq!(gh::param(&params, "state"), Some(STATE));
    assert!(gh::param(&params, "code").is_none());
    assert!(gh::param(&params, "error_uri")
        .unwrap()
        .contains("#redirect-uri-mismatch"));

    // Leaving redirect_uri out uses the registered one.
    gh_sign_in(&fake, &[("redirect_uri", None)]);

    // state and PKCE (S256 only) are required by default; switchable.
    for overrides in [
        vec![("state", None)],
        vec![("state", Some(""))],
        vec![("code_challenge", None), ("code_challenge_method", None)],
        vec![("code_challenge_method", Some("plain"))],
        vec![("code_challenge_method", None)],
        vec![("code_challenge", Some("short"))],
    ] {
        let url = gh_authorize_url(&fake, &overrides);
        assert_eq!(
            fake.sign_in(&url, &user).unwrap_err().status,
            400,
            "{overrides:?}"
        );
        assert_eq!(get(&url, &[]).status, 400);
    }
    fake.set(|c| {
        c.require_state = false;
        c.require_pkce = false;
    });
    let url = gh_authorize_url(
        &fake,
        &[
            ("state", None),
            ("code_challenge", None),
            ("code_challenge_method", None),
        ],
    );
    let location = fake.sign_in(&url, &user).unwrap();
    let code = gh::param(&gh::query_params(&location), "code")
        .unwrap()
        .to_string();
    // Without a challenge there is nothing to verify.
    let t = gh_redeem(&fake, &code, &[("code_verifier", "")]);
    assert!(t.json()["access_token"].is_string(), "{}", t.body);

    // The user refuses: access_denied back to the client, with the state.
    let url = gh_authorize_url(&fake, &[]);
    for location in [fake.decline(&url).unwrap(), {
        fake.set(|c| c.cancel = true);
        get(&url, &[]).location().unwrap()
    }] {
        let params = gh::query_params(&location);
        assert!(location.starts_with(&format!("{REDIRECT}?")));
        assert_eq!(gh::param(&params, "error"), Some("access_denied"));
        let description = gh::param(&params, "error_description");
        assert_eq!(
            description,
            Some("The user has denied your application access.")
        );
        assert_eq!(gh::param(&params, "state"), Some(STATE));
    }

    // A suspended application.
    fake.set(|c| c.suspended = true);
    let location = fake.sign_in(&url, &user).unwrap();
    let error = gh::param(&gh::query_params(&location), "error").map(str::to_string);
    assert_eq!(error.as_deref(), Some("application_suspended"));

    // A URL that is not this fake's.
    let elsewhere = "https://github.com/login/oauth/authorize?client_id=x";
    assert_eq!(fake.sign_in(elsewhere, &user).unwrap_err().status, 0);
}

#[test]
fn github_api_user_email_null_and_emails_with_unverified_addresses() {
    let fake = github();
    let user = GitHubUser {
        id: 71_234_567,
        login: "bruno-costa".into(),
        name: None,
        public_email: None,
        emails: vec![
            GitHubEmail::new("bruno@personal.example", true, false),
            GitHubEmail::new("bruno.costa@work.example", false, true),
            GitHubEmail::new("b@typo.example", false, false),
        ],
    };
    let code = code_of(&fake.sign_in(&gh_authorize_url(&fake, &[]), &user).unwrap());
    let token = str_of(&gh_redeem(&fake, &code, &[]).json(), "access_token").to_string();

    let me = get_bearer(&fake.user_url(), &token);
    assert_eq!(me.status, 200, "{}", me.body);
    let me_json = me.json();
    assert!(me_json["id"].is_u64());
    assert_eq!(
        (&me_json["id"], &me_json["login"]),
        (&json!(71_234_567), &json!("bruno-costa"))
    );
    assert_eq!(me_json["email"], Value::Null);
    assert_eq!(me.header("x-oauth-scopes"), Some("read:user, user:email"));

    let emails = get_bearer(&fake.emails_url(), &token);
    assert_eq!(emails.status, 200, "{}", emails.body);
    assert_eq!(
        emails.json(),
        json!([
            {"email": "bruno@personal.example", "primary": true, "verified": false, "visibility": "private"},
            {"email": "bruno.costa@work.example", "primary": false, "verified": true, "visibility": null},
            {"email": "b@typo.example", "primary": false, "verified": false, "visibility": null},
        ])
    );

    // `token` works as the scheme too; the API answers the user's current data.
    assert!(fake.update_user(71_234_567, |u| {
        u.emails[0].verified = true;
        u.public_email = Some("bruno@personal.example".into());
    }));
    assert!(!fake.update_user(1, |_| {}));
    let me = get(
        &fake.user_url(),
        &[("Authorization", &format!("token {token}"))],
    );
    assert_eq!(me.json()["email"], "bruno@personal.example");
    assert_eq!(
        get_bearer(&fake.emails_url(), &token).json()[0]["verified"],
        true
    );

    // Unknown, missing or revoked tokens.
    let bad = get_bearer(&fake.user_url(), "gho_000000000000000000000000000000000000");
    assert_eq!(
        (bad.status, &bad.json()["message"]),
        (401, &json!("Bad credentials"))
    );
    let none = get(&fake.user_url(), &[]);
    assert_eq!(
        (none.status, &none.json()["message"]),
        (401, &json!("Requires authentication"))
    );
    fake.revoke_access_tokens();
    assert_eq!(get_bearer(&fake.emails_url(), &token).status, 401);

    assert_eq!((fake.user_calls(), fake.emails_calls()), (4, 3));
    let recorded = fake.api_requests();
    assert_eq!(recorded.len(), 7);
    assert!(recorded[0]
        .header("user-agent")
        .unwrap()
        .starts_with("ureq/"));
    assert_eq!(recorded[0].url, "/user");
}

#[test]
fn github_api_requires_a_user_agent() {
    let fake = github();
    let token = gh_token(&fake, "read:user user:email");
    let no_user_agent = agent_with(false, None);
    let auth = format!("Bearer {token}");
    let a = send(
        no_user_agent
            .get(&fake.user_url())
            .header("Authorization", &auth)
            .call(),
    );
    let a = a.unwrap();
    assert_eq!(a.status, 403);
    assert!(a.body.contains("User-Agent"), "{}", a.body);
    assert_eq!(fake.user_calls(), 1);
    assert!(fake.api_requests()[0].header("user-agent").is_none());
    // The web endpoints do not need one.
    let t = try_post_form(&no_user_agent, &fake.token_url(), &[("code", "x")], &[]).unwrap();
    assert_eq!(t.status, 200);
}

#[test]
fn github_emails_need_the_user_email_scope() {
    let fake = github();
    let token = gh_token(&fake, "read:user");
    assert_eq!(get_bearer(&fake.user_url(), &token).status, 200);
    let emails = get_bearer(&fake.emails_url(), &token);
    assert_eq!(
        (emails.status, &emails.json()["message"]),
        (404, &json!("Not Found"))
    );
    assert_eq!(
        emails.header("x-accepted-oauth-scopes"),
        Some("user, user:email")
    );
    assert_eq!(emails.header("x-oauth-scopes"), Some("read:user"));

    // Without any scope /user still answers (public data); `user` implies `user:email`.
    let token = gh_token(&fake, "");
    assert_eq!(get_bearer(&fake.user_url(), &token).status, 200);
    assert_eq!(get_bearer(&fake.emails_url(), &token).status, 404);
    let token = gh_token(&fake, "user");
    assert_eq!(get_bearer(&fake.emails_url(), &token).status, 200);
}

#[test]
fn github_app_user_tokens_expire_and_each_refresh_token_works_once() {
    let fake = github();
    fake.set(|c| c.github_app = true);
    let code = gh_sign_in(&fake, &[]);
    let pairs = [
        ("client_id", gh::DEFAULT_CLIENT_ID),
        ("client_secret", gh::DEFAULT_CLIENT_SECRET),
        ("code", &code),
        ("code_verifier", VERIFIER),
    ];
    let form = post_form(&fake.token_url(), &pairs, &[]).form();
    let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    let expected = [
        "access_token",
        "expires_in",
        "refresh_token",
        "refresh_token_expires_in",
    ];
    assert_eq!(names, [&expected[..], &["scope", "token_type"]].concat());
    let p = |k: &str| gh::param(&form, k).unwrap().to_string();
    assert!(p("access_token").starts_with("ghu_") && p("refresh_token").starts_with("ghr_"));
    assert_eq!(
        (p("expires_in"), p("refresh_token_expires_in")),
        ("28800".into(), "15897600".into())
    );
    assert_eq!(p("scope"), "");
    assert_eq!(
        get_bearer(&fake.emails_url(), &p("access_token")).status,
        200
    );

    // GitHub's rule: "once you use a refresh token, that refresh token and the old user access
    // token will no longer work".
    let (first, old_access) = (p("refresh_token"), p("access_token"));
    let j = gh_refresh(&fake, &first);
    assert_eq!(j["expires_in"], 28800);
    let second = str_of(&j, "refresh_token").to_string();
    assert_ne!(second, first);
    assert_eq!(get_bearer(&fake.user_url(), &old_access).status, 401);
    assert_eq!(
        get_bearer(&fake.user_url(), str_of(&j, "access_token")).status,
        200
    );
    let reused = gh_refresh(&fake, &first);
    assert_eq!(reused["error"], "bad_refresh_token");
    assert!(str_of(&reused, "error_uri").contains("refreshing-user-access-tokens"));
    // GitHub documents no revocation on reuse: the new token still works.
    let third = gh_refresh(&fake, &second);
    let c = fake.counters();
    assert_eq!(
        (c.refreshes, c.reuse_detections, c.grants_revoked),
        (2, 1, 0)
    );
    assert_eq!(
        (fake.presentations(&first), fake.max_presentations()),
        (2, 2)
    );

    fake.expire_access_tokens();
    assert_eq!(
        get_bearer(&fake.user_url(), str_of(&third, "access_token")).status,
        401
    );
    fake.set(|c| c.app_email_permission = false);
    let fresh = gh_refresh(&fake, str_of(&third, "refresh_token"));
    assert_eq!(
        get_bearer(&fake.emails_url(), str_of(&fresh, "access_token")).status,
        403
    );
    fake.expire_refresh_tokens();
    let expired = gh_refresh(&fake, str_of(&fresh, "refresh_token"));
    assert_eq!(expired["error"], "bad_refresh_token");
    // An OAuth app has no refresh tokens.
    fake.set(|c| c.github_app = false);
    assert_eq!(
        gh_refresh(&fake, "ghr_anything")["error"],
        "bad_refresh_token"
    );
}

#[test]
fn github_reuse_detection_when_switched_on_revokes_the_whole_grant() {
    let fake = github();
    fake.set(|c| c.refresh_policy.revoke_grant_on_reuse = true);
    let tokens = gh_app_tokens(&fake);
    let first = str_of(&tokens, "refresh_token");
    let rotated = gh_refresh(&fake, first);
    assert_eq!(gh_refresh(&fake, first)["error"], "bad_refresh_token");
    // RFC 9700 4.14.2: the token that replaced it and its access token end too.
    assert_eq!(
        gh_refresh(&fake, str_of(&rotated, "refresh_token"))["error"],
        "bad_refresh_token"
    );
    assert_eq!(
        get_bearer(&fake.user_url(), str_of(&rotated, "access_token")).status,
        401
    );
    let c = fake.counters();
    assert_eq!(
        (c.refreshes, c.reuse_detections, c.grants_revoked),
        (1, 1, 1)
    );
}

#[test]
fn github_grant_deletion_ends_every_token_of_the_user_for_the_app() {
    let fake = github();
    let (one, two) = (gh_app_tokens(&fake), gh_app_tokens(&fake));
    let delete = |auth: &str, body: &str| {
        let agent = agent_with(true, None);
        let req = agent
            .delete(&fake.grant_url())
            .header("Authorization", auth);
        send(
            req.force_send_body()
                .content_type("application/json")
                .send(body),
        )
        .unwrap()
    };
    let app = basic(gh::DEFAULT_CLIENT_ID, gh::DEFAULT_CLIENT_SECRET);
    let body = json!({"access_token": str_of(&one, "access_token")}).to_string();
    assert_eq!(
        delete(&basic(gh::DEFAULT_CLIENT_ID, "wrong"), &body).status,
        404
    );
    assert_eq!(delete(&app, "{}").status, 422);
    assert_eq!(
        delete(&app, r#"{"access_token": "gho_unknown"}"#).status,
        404
    );
    assert_eq!(fake.revocations(), 0);
    assert_eq!(delete(&app, &body).status, 204);
    for t in [&one, &two] {
        assert_eq!(
            get_bearer(&fake.user_url(), str_of(t, "access_token")).status,
            401
        );
        assert_eq!(
            gh_refresh(&fake, str_of(t, "refresh_token"))["error"],
            "bad_refresh_token"
        );
    }
    assert_eq!((fake.revocations(), fake.counters().grants_revoked), (1, 2));
    assert_eq!(delete(&app, &body).status, 404);
}

#[test]
fn github_api_prefix_injected_errors_delays_and_counters() {
    let fake = FakeGitHub::start_with(FakeGitHubConfig {
        redirect_uri: REDIRECT.into(),
        api_prefix: "/api/v3".into(),
        ..FakeGitHubConfig::default()
    });
    assert_eq!(fake.api_url(), format!("{}/api/v3", fake.base_url()));
    let token = gh_token(&fake, "user:email");
    assert_eq!(get_bearer(&fake.user_url(), &token).status, 200);
    assert_eq!(
        get_bearer(&format!("{}/user", fake.base_url()), &token).status,
        404
    );

    fake.set(|c| c.user_error = Some((503, "Service Unavailable".into())));
    let a = get_bearer(&fake.user_url(), &token);
    assert_eq!(
        (a.status, a.json()["message"].as_str()),
        (503, Some("Service Unavailable"))
    );
    assert_eq!(get_bearer(&fake.emails_url(), &token).status, 200);
    fake.set(|c| {
        c.user_error = None;
        c.emails_error = Some((500, "Server Error".into()));
    });
    assert_eq!(get_bearer(&fake.user_url(), &token).status, 200);
    assert_eq!(get_bearer(&fake.emails_url(), &token).status, 500);

    // Delays hold the answer back at least that long (a lower bound, not a limit).
    fake.set(|c| {
        c.emails_error = None;
        c.token_delay = Duration::from_millis(150);
        c.api_delay = Duration::from_millis(150);
    });
    let started = std::time::Instant::now();
    gh_token(&fake, "user:email");
    assert!(started.elapsed() >= Duration::from_millis(150));
    let started = std::time::Instant::now();
    assert_eq!(get_bearer(&fake.user_url(), &token).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        (
            fake.issued_codes(),
            fake.redeemed_codes(),
            fake.token_calls()
        ),
        (2, 2, 2)
    );
}

// ---------------------------------------------------------------------------------------------
// Google

fn google() -> FakeGoogle {
    FakeGoogle::start_with(FakeGoogleConfig {
        redirect_uris: vec![REDIRECT.into()],
        ..FakeGoogleConfig::default()
    })
}

fn go_authorize_url(fake: &FakeGoogle, overrides: Overrides) -> String {
    let challenge = go::pkce_challenge(VERIFIER);
    let defaults = [
        ("client_id", go::DEFAULT_CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("response_type", "code"),
        ("scope", "openid email profile"),
        ("state", STATE),
        ("nonce", "n-0S6_WzA2Mj"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ];
    url_with(&fake.authorize_url(), &defaults, overrides)
}

fn go_post(fake: &FakeGoogle, defaults: &[(&str, &str)], extra: &[(&str, &str)]) -> Answer {
    let mut pairs = vec![
        ("client_id", go::DEFAULT_CLIENT_ID),
        ("client_secret", go::DEFAULT_CLIENT_SECRET),
    ];
    pairs.extend_from_slice(defaults);
    post_form(&fake.token_url(), &merged(&pairs, extra), &[])
}

fn go_redeem(fake: &FakeGoogle, code: &str, extra: &[(&str, &str)]) -> Answer {
    let defaults = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    go_post(fake, &defaults, extra)
}

fn go_refresh(fake: &FakeGoogle, refresh_token: &str) -> Answer {
    let defaults = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    go_post(fake, &defaults, &[])
}

/// Signs `user` in with `overrides` and redeems the code: the token response.
fn go_tokens(fake: &FakeGoogle, user: &GoogleUser, overrides: Overrides) -> Value {
    let location = fake
        .sign_in(&go_authorize_url(fake, overrides), user)
        .unwrap();
    let t = go_redeem(fake, &code_of(&location), &[]);
    assert_eq!(t.status, 200, "{}", t.body);
    t.json()
}

/// `(status, error, error_description)` of a Google error.
fn go_error(a: &Answer) -> (u16, String, String) {
    let j = a.json();
    assert_eq!(j.as_object().unwrap().len(), 2, "{j}");
    (
        a.status,
        str_of(&j, "error").into(),
        str_of(&j, "error_description").into(),
    )
}

fn ge(status: u16, error: &str, description: &str) -> (u16, String, String) {
    (status, error.into(), description.into())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Verifies an RS256 JWT against a JWKS with ring, independently of the fake's code.
fn verify_rs256(token: &str, jwks: &Value) -> Result<Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err("not three segments".into());
    }
    let header = go::decode_jwt_header(token).ok_or("bad header")?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let key = jwks["keys"]
        .as_array()
        .ok_or("no keys")?
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| format!("unknown kid {kid}"))?;
    let kind = (
        key["kty"].as_str(),
        key["alg"].as_str(),
        key["use"].as_str(),
    );
    assert_eq!(kind, (Some("RSA"), Some("RS256"), Some("sig")));
    let n = go::b64url_decode(key["n"].as_str().unwrap()).unwrap();
    let e = go::b64url_decode(key["e"].as_str().unwrap()).unwrap();
    let sig = go::b64url_decode(parts[2]).ok_or("bad signature encoding")?;
    ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &sig,
        )
        .map_err(|_| "bad signature".to_string())?;
    go::decode_jwt_payload(token).ok_or_else(|| "bad payload".into())
}

fn jwks_over_http(fake: &FakeGoogle) -> Value {
    let a = get(&fake.jwks_url(), &[]);
    assert_eq!(a.status, 200);
    a.json()
}

#[test]
fn google_discovery_document() {
    let fake = google();
    let a = get(&fake.discovery_url(), &[]);
    assert_eq!(a.status, 200);
    let d = a.json();
    let base = fake.base_url();
    assert_eq!(d["issuer"], base);
    assert_eq!(fake.issuer(), base);
    assert_eq!(d["authorization_endpoint"], fake.authorize_url());
    assert_eq!(
        d["authorization_endpoint"],
        format!("{base}/o/oauth2/v2/auth")
    );
    assert_eq!(d["token_endpoint"], fake.token_url());
    assert_eq!(d["userinfo_endpoint"], fake.userinfo_url());
    assert_eq!(d["jwks_uri"], fake.jwks_url());
    assert_eq!(d["jwks_uri"], format!("{base}/oauth2/v3/certs"));
    assert_eq!(
        d["code_challenge_methods_supported"],
        json!(["plain", "S256"])
    );
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["RS256"]));
    assert!(d
        .get("authorization_response_iss_parameter_supported")
        .is_none());
    assert_eq!(fake.discovery_fetches(), 1);

    fake.set(|c| c.issuer = Some("https://accounts.google.com".into()));
    assert_eq!(
        get(&fake.discovery_url(), &[]).json()["issuer"],
        "https://accounts.google.com"
    );
    let t = go_tokens(&fake, &fake.config().user, &[]);
    let claims = go::decode_jwt_payload(t["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["iss"], "https://accounts.google.com");

    fake.set(|c| c.discovery_error = Some(503));
    assert_eq!(get(&fake.discovery_url(), &[]).status, 503);
    assert_eq!(fake.discovery_fetches(), 3);
}

#[test]
fn google_code_flow_signs_id_tokens_verifiable_against_the_jwks() {
    let fake = google();
    let overrides = [
        ("hd", Some("example.com")),
        ("login_hint", Some("ana.silva@gmail.com")),
    ];
    let a = get(&go_authorize_url(&fake, &overrides), &[]);
    assert_eq!(a.status, 302, "{}", a.body);
    let location = a.location().unwrap();
    let params = go::query_params(&location);
    let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    // Google's callback: no `iss`.
    assert_eq!(names, ["state", "code", "scope", "authuser", "prompt"]);
    let scope = "openid https://www.googleapis.com/auth/userinfo.email \
                 https://www.googleapis.com/auth/userinfo.profile";
    assert_eq!(go::param(&params, "scope"), Some(scope));
    assert_eq!(go::param(&params, "prompt"), Some("consent"));
    let code = code_of(&location);
    let recorded = &fake.authorize_requests()[0];
    for (k, v) in [
        ("hd", "example.com"),
        ("nonce", "n-0S6_WzA2Mj"),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ] {
        assert_eq!(go::param(recorded, k), Some(v));
    }

    let t = go_redeem(&fake, &code, &[]);
    assert_eq!(t.status, 200, "{}", t.body);
    let j = t.json();
    assert_eq!(
        (&j["token_type"], &j["expires_in"]),
        (&json!("Bearer"), &json!(3599))
    );
    assert!(str_of(&j, "access_token").starts_with("ya29."));
    assert!(str_of(&j, "refresh_token").starts_with("1//"));
    let id_token = str_of(&j, "id_token");
    let header = go::decode_jwt_header(id_token).unwrap();
    assert_eq!(
        (&header["alg"], &header["kid"]),
        (&json!("RS256"), &json!(fake.current_kid()))
    );
    let jwks = jwks_over_http(&fake);
    assert_eq!((&jwks, fake.jwks_fetches()), (&fake.jwks(), 1));
    let claims = verify_rs256(id_token, &jwks).unwrap();
    let user = fake.config().user;
    assert_eq!(claims["iss"], fake.base_url());
    assert_eq!(
        (&claims["aud"], &claims["azp"]),
        (&json!(go::DEFAULT_CLIENT_ID), &json!(go::DEFAULT_CLIENT_ID))
    );
    assert_eq!(claims["sub"], user.sub);
    assert!(str_of(&claims, "sub").bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(
        (&claims["email"], &claims["email_verified"]),
        (&json!("ana.silva@gmail.com"), &json!(true))
    );
    assert_eq!(
        (&claims["nonce"], &claims["name"]),
        (&json!("n-0S6_WzA2Mj"), &json!("Ana Silva"))
    );
    assert!(
        claims.get("hd").is_none(),
        "hd is a hint, not a claim for consumer accounts"
    );
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(iat <= now() && exp == iat + 3600);
    let at_hash =
        ring::digest::digest(&ring::digest::SHA256, str_of(&j, "access_token").as_bytes());
    assert_eq!(
        claims["at_hash"],
        go::b64url_encode(&at_hash.as_ref()[..16])
    );
    assert_eq!(fake.issued_id_tokens(), vec![id_token.to_string()]);

    // Userinfo with the access token.
    let ui = get_bearer(&fake.userinfo_url(), str_of(&j, "access_token"));
    assert_eq!(ui.status, 200, "{}", ui.body);
    assert_eq!(
        (&ui.json()["sub"], &ui.json()["email_verified"]),
        (&json!(user.sub), &json!(true))
    );
}

#[test]
fn google_refresh_token_only_with_offline_access_and_consent() {
    let fake = google();
    let user = fake.config().user;
    let cases: [(Overrides, bool); 5] = [
        (&[], true),
        (&[("prompt", Some("select_account consent"))], true),
        (&[("prompt", None)], false),
        (&[("access_type", None)], false),
        (
            &[("access_type", Some("online")), ("prompt", Some("consent"))],
            false,
        ),
    ];
    for (overrides, expected) in cases {
        let t = go_tokens(&fake, &user, overrides);
        assert_eq!(t.get("refresh_token").is_some(), expected, "{overrides:?}");
        assert!(t["id_token"].is_string());
    }
    let location = fake
        .sign_in(&go_authorize_url(&fake, &[("prompt", None)]), &user)
        .unwrap();
    assert_eq!(
        go::param(&go::query_params(&location), "prompt"),
        Some("none")
    );
}

#[test]
fn google_token_errors() {
    let fake = google();
    let user = fake.config().user;
    let code = code_of(&fake.sign_in(&go_authorize_url(&fake, &[]), &user).unwrap());
    let other = go::pkce_verifier();
    for (extra, expected) in [
        (
            ("client_secret", "wrong"),
            ge(401, "invalid_client", "Unauthorized"),
        ),
        (
            ("client_id", "1-other.apps.googleusercontent.com"),
            ge(401, "invalid_client", "The OAuth client was not found."),
        ),
        (
            ("client_secret", ""),
            ge(400, "invalid_request", "client_secret is missing."),
        ),
        (
            ("redirect_uri", "http://127.0.0.1:9999/other"),
            ge(400, "redirect_uri_mismatch", "Bad Request"),
        ),
        (
            ("code_verifier", ""),
            ge(400, "invalid_grant", "Missing code verifier."),
        ),
        (
            ("code_verifier", &other),
            ge(400, "invalid_grant", "Invalid code verifier."),
        ),
        (
            ("grant_type", "password"),
            ge(
                400,
                "unsupported_grant_type",
                "Invalid grant_type: password",
            ),
        ),
    ] {
        assert_eq!(
            go_error(&go_redeem(&fake, &code, &[extra])),
            expected,
            "{extra:?}"
        );
    }
    assert_eq!(fake.redeemed_codes(), 0);
    // The code survived the failures; it is one-time.
    assert_eq!(go_redeem(&fake, &code, &[]).status, 200);
    let bad = ge(400, "invalid_grant", "Bad Request");
    assert_eq!(go_error(&go_redeem(&fake, &code, &[])), bad);
    let unknown = go_redeem(&fake, "4/0Anonsense", &[]);
    assert_eq!(
        go_error(&unknown),
        ge(400, "invalid_grant", "Malformed auth code.")
    );
    assert_eq!(fake.redeemed_codes(), 1);

    fake.set(|c| c.code_lifetime = Duration::ZERO);
    let code = code_of(&fake.sign_in(&go_authorize_url(&fake, &[]), &user).unwrap());
    assert_eq!(go_error(&go_redeem(&fake, &code, &[])), bad);

    fake.set(|c| {
        c.code_lifetime = Duration::from_secs(600);
        c.token_error = Some((503, "temporarily_unavailable".into(), "Try again".into()));
    });
    let code = code_of(&fake.sign_in(&go_authorize_url(&fake, &[]), &user).unwrap());
    let unavailable = ge(503, "temporarily_unavailable", "Try again");
    assert_eq!(go_error(&go_redeem(&fake, &code, &[])), unavailable);
    fake.set(|c| c.token_error = None);
    assert_eq!(go_redeem(&fake, &code, &[]).status, 200);
}

#[test]
fn google_authorize_enforcement() {
    let fake = google();
    let user = fake.config().user;
    for (overrides, status, error) in [
        (
            vec![("client_id", Some("1-other.apps.googleusercontent.com"))],
            401,
            "invalid_client",
        ),
        (vec![("client_id", None)], 400, "invalid_request"),
        (
            vec![(
                "redirect_uri",
                Some("http://127.0.0.1:9999/broker/callback/"),
            )],
            400,
            "redirect_uri_mismatch",
        ),
        (
            vec![(
                "redirect_uri",
                Some("http://localhost:9999/broker/callback"),
            )],
            400,
            "redirect_uri_mismatch",
        ),
        (vec![("response_type", None)], 400, "response_type"),
        (
            vec![("response_type", Some("token"))],
            400,
            "unsupported_response_type",
        ),
        (vec![("scope", None)], 400, "scope"),
        (vec![("scope", Some("email profile"))], 400, "openid"),
        (vec![("scope", Some("openid mail"))], 400, "invalid_scope"),
        (vec![("state", None)], 400, "state"),
        (
            vec![("code_challenge", None), ("code_challenge_method", None)],
            400,
            "PKCE",
        ),
        (vec![("code_challenge", None)], 400, "code_challenge"),
        (
            vec![("code_challenge_method", Some("S512"))],
            400,
            "code_challenge_method",
        ),
        (
            vec![("code_challenge", Some("too-short"))],
            400,
            "code_challenge",
        ),
        (vec![("access_type", Some("forever"))], 400, "access_type"),
        (vec![("prompt", Some("none consent"))], 400, "prompt"),
    ] {
        let url = go_authorize_url(&fake, &overrides);
        let a = get(&url, &[]);
        assert_eq!(
            (a.status, a.location()),
            (status, None),
            "{overrides:?}: {}",
            a.body
        );
        assert!(a.body.contains(error), "{overrides:?}: {}", a.body);
        assert_eq!(fake.sign_in(&url, &user).unwrap_err().status, status);
    }
    assert_eq!(fake.issued_codes(), 0);

    // Declining, or `cancel`: access_denied with the state, and nothing else.
    let url = go_authorize_url(&fake, &[]);
    fake.set(|c| c.cancel = true);
    let state: String = form_urlencoded::byte_serialize(STATE.as_bytes()).collect();
    let denied = format!("{REDIRECT}?error=access_denied&state={state}");
    assert_eq!(fake.decline(&url).unwrap(), denied);
    assert_eq!(get(&url, &[]).location().unwrap(), denied);
    fake.set(|c| c.cancel = false);

    // plain PKCE is accepted (Google advertises it) and checked as plain.
    let plain = "plain-verifier-plain-verifier-plain-verifier-0";
    let overrides = [
        ("code_challenge", Some(plain)),
        ("code_challenge_method", Some("plain")),
    ];
    let code = code_of(
        &fake
            .sign_in(&go_authorize_url(&fake, &overrides), &user)
            .unwrap(),
    );
    let t = go_redeem(&fake, &code, &[]);
    assert_eq!(t.json()["error_description"], "Invalid code verifier.");
    assert_eq!(
        go_redeem(&fake, &code, &[("code_verifier", plain)]).status,
        200
    );

    // Relaxed: no state, no PKCE, no openid (then no id_token, as Google).
    fake.set(|c| {
        c.require_state = false;
        c.require_pkce = false;
        c.require_openid = false;
    });
    let overrides = [
        ("state", None),
        ("code_challenge", None),
        ("code_challenge_method", None),
        ("scope", Some("email")),
    ];
    let location = fake
        .sign_in(&go_authorize_url(&fake, &overrides), &user)
        .unwrap();
    let code = go::param(&go::query_params(&location), "code")
        .unwrap()
        .to_string();
    let t = go_redeem(&fake, &code, &[("code_verifier", "")]).json();
    assert!(
        t["access_token"].is_string() && t.get("id_token").is_none(),
        "{t}"
    );
    assert_eq!(t["scope"], "https://www.googleapis.com/auth/userinfo.email");

    let elsewhere = "https://accounts.google.com/o/oauth2/v2/auth";
    assert_eq!(fake.sign_in(elsewhere, &user).unwrap_err().status, 0);
}

#[test]
fn google_refresh_tokens_do_not_rotate_and_revocation_ends_the_grant() {
    let fake = google();
    let user = fake.config().user;
    let j = go_tokens(&fake, &user, &[]);
    let rt = str_of(&j, "refresh_token");
    // The same token twice (HTTP Basic this time): new access and id tokens (no nonce), no
    // new refresh token.
    let auth = basic(go::DEFAULT_CLIENT_ID, go::DEFAULT_CLIENT_SECRET);
    let pairs = [("grant_type", "refresh_token"), ("refresh_token", rt)];
    let mut refreshed = Vec::new();
    for _ in 0..2 {
        let r = post_form(&fake.token_url(), &pairs, &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "{}", r.body);
        let r = r.json();
        assert!(r.get("refresh_token").is_none());
        let claims = verify_rs256(str_of(&r, "id_token"), &fake.jwks()).unwrap();
        assert!(claims["sub"] == json!(user.sub) && claims.get("nonce").is_none());
        refreshed.push(r);
    }
    assert_eq!((fake.refreshes(), fake.presentations(rt)), (2, 2));

    // Revoking an access token ends the whole grant: the refresh token and every access token.
    let revoke = |token: &str| post_form(&fake.revoke_url(), &[("token", token)], &[]);
    assert_eq!(revoke(str_of(&refreshed[1], "access_token")).status, 200);
    let expired = ge(400, "invalid_grant", "Token has been expired or revoked.");
    assert_eq!(go_error(&go_refresh(&fake, rt)), expired);
    for t in [&j, &refreshed[0]] {
        assert_eq!(
            get_bearer(&fake.userinfo_url(), str_of(t, "access_token")).status,
            401
        );
    }
    let again = ge(400, "invalid_token", "Token expired or revoked");
    assert_eq!(go_error(&revoke(rt)), again);
    assert_eq!(fake.revocations(), 1);

    // Apps in "Testing": refresh tokens live 7 days; a test makes that nothing.
    fake.set(|c| c.refresh_token_lifetime = Some(Duration::ZERO));
    let j = go_tokens(&fake, &user, &[]);
    assert_eq!(
        go_error(&go_refresh(&fake, str_of(&j, "refresh_token"))),
        expired
    );
}

#[test]
fn google_workspace_users_and_unverified_addresses() {
    let fake = google();
    let worker = GoogleUser::workspace(
        "117364892034598712345",
        "carla.mendes@contoso.example",
        "contoso.example",
    );
    let location = fake
        .sign_in(&go_authorize_url(&fake, &[]), &worker)
        .unwrap();
    assert_eq!(
        go::param(&go::query_params(&location), "hd"),
        Some("contoso.example")
    );
    let t = go_redeem(&fake, &code_of(&location), &[]).json();
    let claims = verify_rs256(t["id_token"].as_str().unwrap(), &fake.jwks()).unwrap();
    assert_eq!(claims["hd"], "contoso.example");
    assert_eq!(claims["sub"], "117364892034598712345");
    assert_eq!(claims["given_name"], "Carla");

    let unverified = GoogleUser {
        email_verified: false,
        ..GoogleUser::new("100000000000000000001", "dora@elsewhere.example")
    };
    let t = go_tokens(&fake, &unverified, &[("scope", Some("openid email"))]);
    let claims = verify_rs256(t["id_token"].as_str().unwrap(), &fake.jwks()).unwrap();
    assert_eq!(claims["email_verified"], false);
    assert!(
        claims.get("name").is_none(),
        "profile claims need the profile scope"
    );
    let ui = get(
        &fake.userinfo_url(),
        &[(
            "Authorization",
            &format!("Bearer {}", t["access_token"].as_str().unwrap()),
        )],
    )
    .json();
    assert_eq!(
        ui,
        json!({"sub": "100000000000000000001", "email": "dora@elsewhere.example", "email_verified": false})
    );

    // email claims need the email scope.
    let t = go_tokens(&fake, &unverified, &[("scope", Some("openid"))]);
    let claims = go::decode_jwt_payload(t["id_token"].as_str().unwrap()).unwrap();
    assert!(claims.get("email").is_none() && claims.get("email_verified").is_none());

    // Userinfo refuses unknown and expired tokens.
    let bad = get(
        &fake.userinfo_url(),
        &[("Authorization", "Bearer ya29.nothing")],
    );
    assert_eq!(bad.status, 401);
    assert!(bad
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    fake.expire_access_tokens();
    let expired = get(
        &fake.userinfo_url(),
        &[(
            "Authorization",
            &format!("Bearer {}", t["access_token"].as_str().unwrap()),
        )],
    );
    assert_eq!(expired.status, 401);
    assert_eq!(fake.userinfo_calls(), 3);
}

#[test]
fn google_key_rotation_changes_the_kid_and_the_jwks() {
    let fake = google();
    let user = fake.config().user;
    let first_kid = fake.current_kid();
    assert_eq!(first_kid.len(), 40);
    let jwks = jwks_over_http(&fake);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], first_kid);
    assert_eq!(jwks["keys"][0]["e"], "AQAB");
    let old_token = go_tokens(&fake, &user, &[])["id_token"]
        .as_str()
        .unwrap()
        .to_string();

    fake.rotate_keys();
    let second_kid = fake.current_kid();
    assert_ne!(second_kid, first_kid);
    assert_eq!(
        fake.published_kids(),
        vec![second_kid.clone(), first_kid.clone()]
    );
    let new_token = go_tokens(&fake, &user, &[])["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        go::decode_jwt_header(&new_token).unwrap()["kid"],
        second_kid
    );
    // A verifier holding the old JWKS does not know the new kid: it must fetch again.
    assert_eq!(
        verify_rs256(&new_token, &jwks).unwrap_err(),
        format!("unknown kid {second_kid}")
    );
    let jwks2 = jwks_over_http(&fake);
    verify_rs256(&new_token, &jwks2).unwrap();
    verify_rs256(&old_token, &jwks2).unwrap();
    assert_eq!(fake.jwks_fetches(), 2);

    fake.unpublish_old_keys();
    let jwks3 = jwks_over_http(&fake);
    assert_eq!(fake.published_kids(), vec![second_kid.clone()]);
    assert!(verify_rs256(&old_token, &jwks3).is_err());
    verify_rs256(&new_token, &jwks3).unwrap();

    // Rotating again goes back to the first key.
    fake.rotate_keys();
    assert_eq!(fake.current_kid(), first_kid);
    assert_eq!(fake.published_kids(), vec![first_kid, second_kid]);
    assert_eq!(fake.jwks_fetches(), 3);

    fake.set(|c| c.jwks_error = Some(500));
    assert_eq!(get(&fake.jwks_url(), &[]).status, 500);
    assert_eq!(fake.jwks_fetches(), 4);
}

#[test]
fn google_hostile_id_tokens_are_what_they_claim() {
    let fake = google();
    let user = fake.config().user;
    let jwks = fake.jwks();
    let next = |tamper: Tamper| -> (String, Value) {
        fake.set_next_id_token_tamper(tamper);
        let t = go_tokens(&fake, &user, &[]);
        let token = t["id_token"].as_str().unwrap().to_string();
        let claims = go::decode_jwt_payload(&token).unwrap();
        (token, claims)
    };
    let kid = fake.current_kid();

    let (clean, clean_claims) = next(Tamper::Claims(json!({})));
    verify_rs256(&clean, &jwks).unwrap();

    let (t, _) = next(Tamper::ForgedSignature);
    assert_eq!(go::decode_jwt_header(&t).unwrap()["kid"], kid);
    assert_eq!(verify_rs256(&t, &jwks).unwrap_err(), "bad signature");

    let (t, _) = next(Tamper::UnknownKid);
    let header = go::decode_jwt_header(&t).unwrap();
    assert_eq!(header["kid"], fake.unknown_kid());
    assert!(!fake.published_kids().contains(&fake.unknown_kid()));
    assert!(verify_rs256(&t, &jwks)
        .unwrap_err()
        .starts_with("unknown kid"));

    let (t, c) = next(Tamper::WrongAud);
    verify_rs256(&t, &jwks).unwrap();
    assert_ne!(c["aud"], go::DEFAULT_CLIENT_ID);
    assert_eq!(c["aud"], c["azp"]);

    let (t, c) = next(Tamper::WrongIss);
    verify_rs256(&t, &jwks).unwrap();
    assert_ne!(c["iss"], fake.issuer());

    let (t, c) = next(Tamper::WrongNonce);
    verify_rs256(&t, &jwks).unwrap();
    assert_ne!(c["nonce"], clean_claims["nonce"]);
    assert!(c["nonce"].is_string());

    let (t, c) = next(Tamper::Expired);
    verify_rs256(&t, &jwks).unwrap();
    assert!(c["exp"].as_u64().unwrap() < now());

    let (t, c) = next(Tamper::IssuedInFuture);
    verify_rs256(&t, &jwks).unwrap();
    assert!(c["iat"].as_u64().unwrap() > now());

    let (previous, _) = next(Tamper::Claims(
        json!({"email_verified": "true", "name": null}),
    ));
    let c = verify_rs256(&previous, &jwks).unwrap();
    assert_eq!(c["email_verified"], "true");
    assert!(c.get("name").is_none());
    let (t, _) = next(Tamper::ReplayPrevious);
    assert_eq!(t, previous);

    let (t, c) = next(Tamper::AlgNone);
    assert!(t.ends_with('.'));
    let header = go::decode_jwt_header(&t).unwrap();
    assert_eq!(header["alg"], "none");
    assert_eq!(c["sub"], user.sub);
    assert!(verify_rs256(&t, &jwks).is_err());

    let (t, _) = next(Tamper::Hs256WithPublicKey);
    let header = go::decode_jwt_header(&t).unwrap();
    assert_eq!(
        (header["alg"].as_str(), header["kid"].as_str()),
        (Some("HS256"), Some(kid.as_str()))
    );
    let pem = fake.public_key_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let (input, sig) = t.rsplit_once('.').unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes());
    ring::hmac::verify(&key, input.as_bytes(), &go::b64url_decode(sig).unwrap())
        .expect("HMAC keyed with the public key's PEM");
    assert!(verify_rs256(&t, &jwks).is_err());

    // One-shot: the next token is clean again; a configured tamper applies to every token.
    let (t, c) = next(Tamper::Claims(json!({})));
    verify_rs256(&t, &jwks).unwrap();
    assert_eq!(c["aud"], go::DEFAULT_CLIENT_ID);
    let t = go_tokens(&fake, &user, &[]);
    verify_rs256(t["id_token"].as_str().unwrap(), &jwks).unwrap();
    fake.set(|c| c.id_token_tamper = Some(Tamper::WrongAud));
    for _ in 0..2 {
        let t = go_tokens(&fake, &user, &[]);
        let c = go::decode_jwt_payload(t["id_token"].as_str().unwrap()).unwrap();
        assert_ne!(c["aud"], go::DEFAULT_CLIENT_ID);
    }
    assert_eq!(fake.issued_id_tokens().len(), 16);

    // sign_id_token: arbitrary claims, properly signed.
    let token = fake.sign_id_token(&json!({"sub": "1", "aud": "x"}));
    assert_eq!(verify_rs256(&token, &jwks).unwrap()["aud"], "x");
}

#[test]
fn google_keys_are_the_committed_test_fixtures() {
    // The public key in the PEM matches the JWK: SubjectPublicKeyInfo wraps (n, e).
    let fake = google();
    let pem = fake.public_key_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let jwk = &fake.jwks()["keys"][0];
    let n = go::b64url_decode(jwk["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "2048-bit modulus");
    assert!(der.windows(n.len()).any(|w| w == n.as_slice()));
    assert!(der.ends_with(&[0x02, 0x03, 0x01, 0x00, 0x01]), "e = 65537");
}

// ---------------------------------------------------------------------------------------------
// The core under every fake: rotation policies as data, faults, counters

#[test]
fn a_grace_window_answers_a_retry_with_the_same_successor_and_a_later_reuse_revokes_the_grant() {
    let fake = google();
    // Any fake takes any provider's rule: Google's fake with Okta/Auth0/Dex-style rotation.
    let policy = RefreshPolicy::one_time_with_grace(Duration::from_secs(600));
    fake.set(|c| c.refresh_policy = policy);
    let j = go_tokens(&fake, &fake.config().user, &[]);
    let first = str_of(&j, "refresh_token");
    let second = go_refresh(&fake, first).json();
    let next = str_of(&second, "refresh_token");
    assert_ne!(next, first);
    // A retry within the window gets the same successor (a lost answer is not fatal).
    let retry = go_refresh(&fake, first).json();
    assert_eq!(retry["refresh_token"], next);
    let third = go_refresh(&fake, next).json();
    assert_eq!(fake.counters().reuse_detections, 0);
    // The window closes: the first token is now a reuse, and the whole grant ends.
    fake.set(|c| {
        c.refresh_policy.rotation = Rotation::OneTime {
            grace: Duration::ZERO,
        }
    });
    let revoked = ge(400, "invalid_grant", "Token has been expired or revoked.");
    assert_eq!(go_error(&go_refresh(&fake, first)), revoked);
    assert_eq!(
        go_error(&go_refresh(&fake, str_of(&third, "refresh_token"))),
        revoked
    );
    let c = fake.counters();
    assert_eq!(
        (c.refreshes, c.reuse_detections, c.grants_revoked),
        (3, 1, 1)
    );
    assert_eq!((fake.presentations(first), c.refresh_presentations), (3, 5));
}

#[test]
fn injected_faults_strike_before_or_after_the_grant_is_processed() {
    let fake = github();
    let first = str_of(&gh_app_tokens(&fake), "refresh_token").to_string();
    let refresh = |agent: &ureq::Agent, token: &str| {
        let pairs = [
            ("client_id", gh::DEFAULT_CLIENT_ID),
            ("client_secret", gh::DEFAULT_CLIENT_SECRET),
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
        ];
        try_post_form(agent, &fake.token_url(), &pairs, &[JSON])
    };
    let agent = agent_with(true, None);

    // Before: a gateway's 502, and nothing changed at the provider.
    fake.inject_token_fault(Fault::before(FaultKind::Status(502)));
    let a = refresh(&agent, &first).unwrap();
    assert!(
        a.status == 502 && a.content_type().starts_with("text/html"),
        "{}",
        a.body
    );
    let second = refresh(&agent, &first).unwrap().json();
    let second = str_of(&second, "refresh_token").to_string();

    // After: the provider rotated, but the answer is lost; the token is spent all the same.
    fake.inject_token_fault(Fault::after(FaultKind::NoAnswer));
    assert!(refresh(&agent, &second).is_err());
    assert_eq!(gh_refresh(&fake, &second)["error"], "bad_refresh_token");
    let c = fake.counters();
    assert_eq!(
        (c.refreshes, c.reuse_detections, c.refresh_presentations),
        (2, 1, 4)
    );

    // A hang ends with the client's time-out; it held nothing else up, and changed nothing.
    let token = str_of(&gh_app_tokens(&fake), "refresh_token").to_string();
    fake.inject_token_fault(Fault::before(FaultKind::Hang));
    let impatient = agent_with(true, Some(Duration::from_millis(500)));
    assert!(refresh(&impatient, &token).is_err());
    assert!(gh_refresh(&fake, &token)["refresh_token"].is_string());
    assert_eq!(fake.presentations(&token), 2);
}

#[test]
fn a_late_answer_lets_a_second_presentation_meet_a_spent_token() {
    let fake = github();
    let first = str_of(&gh_app_tokens(&fake), "refresh_token").to_string();
    // The refresh is done at once; its answer comes only when the fake is dropped.
    fake.inject_token_fault(Fault::after(FaultKind::Delay(Duration::from_secs(600))));
    let (url, token) = (fake.token_url(), first.clone());
    let slow = std::thread::spawn(move || {
        let pairs = [
            ("client_id", gh::DEFAULT_CLIENT_ID),
            ("client_secret", gh::DEFAULT_CLIENT_SECRET),
            ("grant_type", "refresh_token"),
            ("refresh_token", &token),
        ];
        try_post_form(&agent_with(true, None), &url, &pairs, &[JSON]).map(|a| a.json())
    });
    support::eventually("the first refresh to be done", || {
        (fake.refreshes() == 1).then_some(())
    });
    // A second replica, not waiting, presents the same token: it is spent already.
    assert_eq!(gh_refresh(&fake, &first)["error"], "bad_refresh_token");
    assert!(!slow.is_finished());
    // What a client must never do, counted.
    assert_eq!(
        (fake.presentations(&first), fake.max_presentations()),
        (2, 2)
    );
    assert_eq!(fake.counters().reuse_detections, 1);
    drop(fake);
    let late = slow.join().unwrap().unwrap();
    assert!(str_of(&late, "refresh_token").starts_with("ghr_"));
}
