//! Tests of the fake GitHub and the fake Google used by the broker tests: each fake's
//! enforcement and quirks, checked with plain HTTP.

use crate::support;

use support::fake_github;
use support::fake_google;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};

use fake_github::{FakeGitHub, FakeGitHubConfig, GitHubEmail, GitHubUser};
use fake_google::{FakeGoogle, FakeGoogleConfig, GoogleUser, Tamper};

/// Authorize-parameter overrides: `(name, Some(value))` replaces, `(name, None)` removes.
type Overrides<'a> = &'a [(&'a str, Option<&'a str>)];

const REDIRECT: &str = "http://127.0.0.1:9999/broker/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const STATE: &str = "st-ä/+= 1";

// ---------------------------------------------------------------------------------------------
// Plain HTTP

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// An agent that sends no `User-Agent` (ureq sends one by default).
fn agent_without_user_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(ureq::config::AutoHeaderValue::None)
        .build()
        .into()
}

struct Answer {
    status: u16,
    content_type: String,
    location: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read(mut resp: ureq::http::Response<ureq::Body>) -> Answer {
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    Answer {
        status: resp.status().as_u16(),
        content_type: find("content-type").unwrap_or_default(),
        location: find("location"),
        body: resp.body_mut().read_to_string().unwrap(),
        headers,
    }
}

fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read(req.call().unwrap())
}

fn post_form(url: &str, pairs: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let mut req = agent()
        .post(url)
        .content_type("application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read(req.send(body).unwrap())
}

/// `base?k=v&...` with `overrides` replacing (or, with `None`, removing) defaults.
fn url_with(base: &str, defaults: &[(&str, &str)], overrides: &[(&str, Option<&str>)]) -> String {
    let mut pairs: Vec<(String, Option<String>)> = defaults
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect();
    for (k, v) in overrides {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v.map(str::to_string),
            None => pairs.push((k.to_string(), v.map(str::to_string))),
        }
    }
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        if let Some(v) = v {
            ser.append_pair(k, v);
        }
    }
    format!("{base}?{}", ser.finish())
}

fn merged<'a>(
    defaults: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut pairs = defaults.to_vec();
    for (k, v) in extra {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v,
            None => pairs.push((k, v)),
        }
    }
    pairs.retain(|(_, v)| !v.is_empty());
    pairs
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

// ---------------------------------------------------------------------------------------------
// GitHub

fn github() -> FakeGitHub {
    FakeGitHub::start_with(FakeGitHubConfig {
        redirect_uri: REDIRECT.into(),
        ..FakeGitHubConfig::default()
    })
}

fn gh_authorize_url(fake: &FakeGitHub, overrides: &[(&str, Option<&str>)]) -> String {
    let challenge = fake_github::pkce_challenge(VERIFIER);
    url_with(
        &fake.authorize_url(),
        &[
            ("client_id", fake_github::DEFAULT_CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("scope", "read:user user:email"),
            ("state", STATE),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
        overrides,
    )
}

/// The code from a successful sign-in redirect.
fn gh_code(location: &str) -> String {
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    let params = fake_github::query_params(location);
    assert_eq!(fake_github::param(&params, "state"), Some(STATE));
    fake_github::param(&params, "code")
        .expect("code")
        .to_string()
}

fn gh_redeem(
    fake: &FakeGitHub,
    code: &str,
    extra: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Answer {
    let pairs = merged(
        &[
            ("client_id", fake_github::DEFAULT_CLIENT_ID),
            ("client_secret", fake_github::DEFAULT_CLIENT_SECRET),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
        extra,
    );
    post_form(&fake.token_url(), &pairs, headers)
}

const JSON: (&str, &str) = ("Accept", "application/json");

/// Signs in the default user and returns an access token (JSON answer).
fn gh_token(fake: &FakeGitHub, scope: &str) -> String {
    let url = gh_authorize_url(fake, &[("scope", Some(scope))]);
    let code = gh_code(&fake.sign_in(&url, &fake.config().user).unwrap());
    let t = gh_redeem(fake, &code, &[], &[JSON]).json();
    t["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

fn gh_api(url: &str, token: &str) -> Answer {
    get(url, &[("Authorization", &format!("Bearer {token}"))])
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
    let code = gh_code(a.location.as_deref().unwrap());
    assert_eq!(code.len(), 20);
    assert_eq!(fake.issued_codes(), 1);
    let recorded = fake.authorize_requests();
    assert_eq!(fake_github::param(&recorded[0], "login"), Some("ana-silva"));
    assert_eq!(
        fake_github::param(&recorded[0], "code_challenge_method"),
        Some("S256")
    );

    // No Accept: application/json -> form-encoded, GitHub's default.
    let t = gh_redeem(&fake, &code, &[], &[]);
    assert_eq!(t.status, 200);
    assert!(
        t.content_type
            .starts_with("application/x-www-form-urlencoded"),
        "{}",
        t.content_type
    );
    let form = t.form();
    let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["access_token", "scope", "token_type"]);
    let token = fake_github::param(&form, "access_token").unwrap();
    assert!(token.starts_with("gho_") && token.len() == 40, "{token}");
    assert_eq!(
        fake_github::param(&form, "scope"),
        Some("read:user,user:email")
    );
    assert_eq!(fake_github::param(&form, "token_type"), Some("bearer"));
    assert_eq!(fake.redeemed_codes(), 1);
    assert_eq!(
        fake_github::param(&fake.token_requests()[0], "code_verifier"),
        Some(VERIFIER)
    );

    // Accept: application/json -> JSON; an OAuth app gets no refresh token and no expiry.
    let code = gh_code(
        &fake
            .sign_in(&gh_authorize_url(&fake, &[]), &fake.config().user)
            .unwrap(),
    );
    let t = gh_redeem(&fake, &code, &[], &[JSON]);
    assert!(t.content_type.starts_with("application/json"));
    let j = t.json();
    assert!(j["access_token"].as_str().unwrap().starts_with("gho_"));
    assert_eq!(j["token_type"], "bearer");
    assert_eq!(j["scope"], "read:user,user:email");
    assert!(j.get("refresh_token").is_none() && j.get("expires_in").is_none());
    assert_eq!(fake.token_calls(), 2);
}

#[test]
fn github_token_errors_are_http_200_with_error_fields() {
    let fake = github();
    let url = gh_authorize_url(&fake, &[]);
    let code = gh_code(&fake.sign_in(&url, &fake.config().user).unwrap());

    let check = |a: &Answer, error: &str| {
        assert_eq!(a.status, 200, "GitHub answers errors with 200: {}", a.body);
        let j = a.json();
        assert_eq!(j["error"], error, "{}", a.body);
        assert!(j["error_description"].as_str().is_some());
        assert!(j["error_uri"]
            .as_str()
            .unwrap()
            .starts_with("https://docs.github.com/"));
        assert!(j.get("access_token").is_none());
    };
    check(
        &gh_redeem(&fake, &code, &[("client_secret", "wrong")], &[JSON]),
        "incorrect_client_credentials",
    );
    check(
        &gh_redeem(&fake, &code, &[("client_secret", "")], &[JSON]),
        "incorrect_client_credentials",
    );
    check(
        &gh_redeem(
            &fake,
            &code,
            &[("client_id", "Ov23liSomeoneElse000")],
            &[JSON],
        ),
        "incorrect_client_credentials",
    );
    check(
        &gh_redeem(&fake, "0123456789abcdef0123", &[], &[JSON]),
        "bad_verification_code",
    );
    check(
        &gh_redeem(
            &fake,
            &code,
            &[("redirect_uri", "http://127.0.0.1:9999/other")],
            &[JSON],
        ),
        "redirect_uri_mismatch",
    );
    check(
        &gh_redeem(&fake, &code, &[("code_verifier", "")], &[JSON]),
        "bad_code_verifier",
    );
    check(
        &gh_redeem(
            &fake,
            &code,
            &[("code_verifier", &fake_github::pkce_verifier())],
            &[JSON],
        ),
        "bad_code_verifier",
    );
    // Errors are form-encoded too without Accept: application/json.
    let form = gh_redeem(&fake, &code, &[("client_secret", "wrong")], &[]);
    assert_eq!(form.status, 200);
    assert_eq!(
        fake_github::param(&form.form(), "error"),
        Some("incorrect_client_credentials")
    );
    assert_eq!(fake.redeemed_codes(), 0);

    // The failures left the code usable; HTTP Basic authenticates the client as well as the
    // form does, and the code is one-time.
    let basic_pairs = [
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let auth = basic(
        fake_github::DEFAULT_CLIENT_ID,
        fake_github::DEFAULT_CLIENT_SECRET,
    );
    let ok = post_form(
        &fake.token_url(),
        &basic_pairs,
        &[JSON, ("Authorization", &auth)],
    );
    assert!(ok.json()["access_token"].is_string(), "{}", ok.body);
    check(
        &gh_redeem(&fake, &code, &[], &[JSON]),
        "bad_verification_code",
    );

    // redirect_uri is optional at the token endpoint (GitHub's rule).
    let code = gh_code(&fake.sign_in(&url, &fake.config().user).unwrap());
    let ok = gh_redeem(&fake, &code, &[("redirect_uri", "")], &[JSON]);
    assert!(ok.json()["access_token"].is_string(), "{}", ok.body);

    // Codes expire.
    fake.set(|c| c.code_lifetime = Duration::ZERO);
    let code = gh_code(&fake.sign_in(&url, &fake.config().user).unwrap());
    check(
        &gh_redeem(&fake, &code, &[], &[JSON]),
        "bad_verification_code",
    );

    // Injected errors come the same way.
    fake.set(|c| {
        c.code_lifetime = Duration::from_secs(600);
        c.token_error = Some((
            "unverified_user_email".into(),
            "The user must have a verified primary email.".into(),
        ));
    });
    let code = gh_code(&fake.sign_in(&url, &fake.config().user).unwrap());
    check(
        &gh_redeem(&fake, &code, &[], &[JSON]),
        "unverified_user_email",
    );
}

#[test]
fn github_authorize_enforcement() {
    let fake = github();
    let user = fake.config().user;

    // An unknown application: a 404 page, no redirect.
    for url in [
        gh_authorize_url(&fake, &[("client_id", Some("Ov23liSomeoneElse000"))]),
        gh_authorize_url(&fake, &[("client_id", None)]),
    ] {
        let a = get(&url, &[]);
        assert_eq!((a.status, a.location.as_deref()), (404, None), "{url}");
        assert_eq!(fake.sign_in(&url, &user).unwrap_err().status, 404);
    }

    // A redirect_uri other than the registered one is reported to the registered callback.
    let other = gh_authorize_url(
        &fake,
        &[(
            "redirect_uri",
            Some("http://127.0.0.1:9999/broker/callback/"),
        )],
    );
    let location = fake.sign_in(&other, &user).unwrap();
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    let params = fake_github::query_params(&location);
    assert_eq!(
        fake_github::param(&params, "error"),
        Some("redirect_uri_mismatch")
    );
    assert_eq!(fake_github::param(&params, "state"), Some(STATE));
    assert!(fake_github::param(&params, "code").is_none());
    assert!(fake_github::param(&params, "error_uri")
        .unwrap()
        .contains("#redirect-uri-mismatch"));

    // Leaving redirect_uri out uses the registered one.
    let location = fake
        .sign_in(&gh_authorize_url(&fake, &[("redirect_uri", None)]), &user)
        .unwrap();
    gh_code(&location);

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
        let err = fake.sign_in(&url, &user).unwrap_err();
        assert_eq!(err.status, 400, "{overrides:?}");
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
    let code = fake_github::param(&fake_github::query_params(&location), "code")
        .unwrap()
        .to_string();
    // Without a challenge there is nothing to verify.
    let t = gh_redeem(&fake, &code, &[("code_verifier", "")], &[JSON]);
    assert!(t.json()["access_token"].is_string(), "{}", t.body);

    // The user refuses: access_denied back to the client, with the state.
    let url = gh_authorize_url(&fake, &[]);
    for location in [fake.decline(&url).unwrap(), {
        fake.set(|c| c.cancel = true);
        get(&url, &[]).location.unwrap()
    }] {
        let params = fake_github::query_params(&location);
        assert!(location.starts_with(&format!("{REDIRECT}?")));
        assert_eq!(fake_github::param(&params, "error"), Some("access_denied"));
        assert_eq!(
            fake_github::param(&params, "error_description"),
            Some("The user has denied your application access.")
        );
        assert_eq!(fake_github::param(&params, "state"), Some(STATE));
    }

    // A suspended application.
    fake.set(|c| c.suspended = true);
    let location = fake.sign_in(&url, &user).unwrap();
    assert_eq!(
        fake_github::param(&fake_github::query_params(&location), "error"),
        Some("application_suspended")
    );

    // A URL that is not this fake's.
    assert_eq!(
        fake.sign_in(
            "https://github.com/login/oauth/authorize?client_id=x",
            &user
        )
        .unwrap_err()
        .status,
        0
    );
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
    let url = gh_authorize_url(&fake, &[]);
    let code = gh_code(&fake.sign_in(&url, &user).unwrap());
    let token = gh_redeem(&fake, &code, &[], &[JSON]).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let me = gh_api(&fake.user_url(), &token);
    assert_eq!(me.status, 200, "{}", me.body);
    let me_json = me.json();
    assert_eq!(me_json["id"], 71_234_567);
    assert!(me_json["id"].is_u64());
    assert_eq!(me_json["login"], "bruno-costa");
    assert_eq!(me_json["email"], Value::Null);
    assert_eq!(me.header("x-oauth-scopes"), Some("read:user, user:email"));

    let emails = gh_api(&fake.emails_url(), &token);
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
    let emails = gh_api(&fake.emails_url(), &token).json();
    assert_eq!(emails[0]["verified"], true);

    // Unknown, missing or revoked tokens.
    let bad = gh_api(&fake.user_url(), "gho_000000000000000000000000000000000000");
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["message"], "Bad credentials");
    let none = get(&fake.user_url(), &[]);
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["message"], "Requires authentication");
    fake.revoke_access_tokens();
    assert_eq!(gh_api(&fake.emails_url(), &token).status, 401);

    assert_eq!(fake.user_calls(), 4);
    assert_eq!(fake.emails_calls(), 3);
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
    let a = read(
        agent_without_user_agent()
            .get(&fake.user_url())
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap(),
    );
    assert_eq!(a.status, 403);
    assert!(a.body.contains("User-Agent"), "{}", a.body);
    assert_eq!(fake.user_calls(), 1);
    assert!(fake.api_requests()[0].header("user-agent").is_none());
    // The web endpoints do not need one.
    let t = read(
        agent_without_user_agent()
            .post(&fake.token_url())
            .content_type("application/x-www-form-urlencoded")
            .send("code=x")
            .unwrap(),
    );
    assert_eq!(t.status, 200);
}

#[test]
fn github_emails_need_the_user_email_scope() {
    let fake = github();
    let token = gh_token(&fake, "read:user");
    assert_eq!(gh_api(&fake.user_url(), &token).status, 200);
    let emails = gh_api(&fake.emails_url(), &token);
    assert_eq!(emails.status, 404, "{}", emails.body);
    assert_eq!(emails.json()["message"], "Not Found");
    assert_eq!(
        emails.header("x-accepted-oauth-scopes"),
        Some("user, user:email")
    );
    assert_eq!(emails.header("x-oauth-scopes"), Some("read:user"));

    // Without any scope /user still answers (public data); `user` implies `user:email`.
    let token = gh_token(&fake, "");
    assert_eq!(gh_api(&fake.user_url(), &token).status, 200);
    assert_eq!(gh_api(&fake.emails_url(), &token).status, 404);
    let token = gh_token(&fake, "user");
    assert_eq!(gh_api(&fake.emails_url(), &token).status, 200);
}

#[test]
fn github_app_mode_expiring_tokens_and_rotating_refresh() {
    let fake = github();
    fake.set(|c| c.github_app = true);
    let code = gh_code(
        &fake
            .sign_in(&gh_authorize_url(&fake, &[]), &fake.config().user)
            .unwrap(),
    );
    let form = gh_redeem(&fake, &code, &[], &[]).form();
    let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "access_token",
            "expires_in",
            "refresh_token",
            "refresh_token_expires_in",
            "scope",
            "token_type"
        ]
    );
    let p = |k: &str| fake_github::param(&form, k).unwrap().to_string();
    assert!(p("access_token").starts_with("ghu_"));
    assert!(p("refresh_token").starts_with("ghr_"));
    assert_eq!(p("expires_in"), "28800");
    assert_eq!(p("refresh_token_expires_in"), "15897600");
    assert_eq!(p("scope"), "");
    assert_eq!(gh_api(&fake.emails_url(), &p("access_token")).status, 200);

    let refresh = |rt: &str| {
        post_form(
            &fake.token_url(),
            &[
                ("client_id", fake_github::DEFAULT_CLIENT_ID),
                ("client_secret", fake_github::DEFAULT_CLIENT_SECRET),
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
            ],
            &[JSON],
        )
        .json()
    };
    let j = refresh(&p("refresh_token"));
    assert_eq!(j["expires_in"], 28800);
    let new_rt = j["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(new_rt, p("refresh_token"));
    assert_eq!(refresh(&p("refresh_token"))["error"], "bad_refresh_token");
    assert_eq!(fake.refreshes(), 1);

    fake.expire_access_tokens();
    let expired = gh_api(&fake.user_url(), j["access_token"].as_str().unwrap());
    assert_eq!(expired.status, 401);
    fake.set(|c| c.app_email_permission = false);
    let fresh = refresh(&new_rt);
    let emails = gh_api(&fake.emails_url(), fresh["access_token"].as_str().unwrap());
    assert_eq!(emails.status, 403);
    fake.revoke_refresh_tokens();
    assert_eq!(
        refresh(fresh["refresh_token"].as_str().unwrap())["error"],
        "bad_refresh_token"
    );

    // An OAuth app has no refresh tokens.
    fake.set(|c| c.github_app = false);
    assert_eq!(refresh("ghr_anything")["error"], "bad_refresh_token");
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
    assert_eq!(gh_api(&fake.user_url(), &token).status, 200);
    assert_eq!(
        gh_api(&format!("{}/user", fake.base_url()), &token).status,
        404
    );

    fake.set(|c| c.user_error = Some((503, "Service Unavailable".into())));
    let a = gh_api(&fake.user_url(), &token);
    assert_eq!(
        (a.status, a.json()["message"].as_str()),
        (503, Some("Service Unavailable"))
    );
    assert_eq!(gh_api(&fake.emails_url(), &token).status, 200);
    fake.set(|c| {
        c.user_error = None;
        c.emails_error = Some((500, "Server Error".into()));
    });
    assert_eq!(gh_api(&fake.user_url(), &token).status, 200);
    assert_eq!(gh_api(&fake.emails_url(), &token).status, 500);

    // Delays hold the answer back at least that long (a lower bound, not a limit).
    fake.set(|c| {
        c.emails_error = None;
        c.token_delay = Duration::from_millis(150);
        c.api_delay = Duration::from_millis(150);
    });
    let started = Instant::now();
    gh_token(&fake, "user:email");
    assert!(started.elapsed() >= Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(gh_api(&fake.user_url(), &token).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(fake.issued_codes(), 2);
    assert_eq!(fake.redeemed_codes(), 2);
    assert_eq!(fake.token_calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// Google

fn google() -> FakeGoogle {
    FakeGoogle::start_with(FakeGoogleConfig {
        redirect_uris: vec![REDIRECT.into()],
        ..FakeGoogleConfig::default()
    })
}

fn go_authorize_url(fake: &FakeGoogle, overrides: &[(&str, Option<&str>)]) -> String {
    let challenge = fake_google::pkce_challenge(VERIFIER);
    url_with(
        &fake.authorize_url(),
        &[
            ("client_id", fake_google::DEFAULT_CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid email profile"),
            ("state", STATE),
            ("nonce", "n-0S6_WzA2Mj"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("access_type", "offline"),
            ("prompt", "consent"),
        ],
        overrides,
    )
}

fn go_code(location: &str) -> String {
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    let params = fake_google::query_params(location);
    assert_eq!(fake_google::param(&params, "state"), Some(STATE));
    fake_google::param(&params, "code")
        .expect("code")
        .to_string()
}

fn go_redeem(fake: &FakeGoogle, code: &str, extra: &[(&str, &str)]) -> Answer {
    let pairs = merged(
        &[
            ("grant_type", "authorization_code"),
            ("client_id", fake_google::DEFAULT_CLIENT_ID),
            ("client_secret", fake_google::DEFAULT_CLIENT_SECRET),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
        extra,
    );
    post_form(&fake.token_url(), &pairs, &[])
}

/// Signs `user` in with `overrides` and redeems the code: the token response.
fn go_tokens(fake: &FakeGoogle, user: &GoogleUser, overrides: &[(&str, Option<&str>)]) -> Value {
    let location = fake
        .sign_in(&go_authorize_url(fake, overrides), user)
        .unwrap();
    let t = go_redeem(fake, &go_code(&location), &[]);
    assert_eq!(t.status, 200, "{}", t.body);
    t.json()
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
    let header = fake_google::decode_jwt_header(token).ok_or("bad header")?;
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
    assert_eq!(
        (
            key["kty"].as_str(),
            key["alg"].as_str(),
            key["use"].as_str()
        ),
        (Some("RSA"), Some("RS256"), Some("sig"))
    );
    let n = fake_google::b64url_decode(key["n"].as_str().unwrap()).unwrap();
    let e = fake_google::b64url_decode(key["e"].as_str().unwrap()).unwrap();
    let sig = fake_google::b64url_decode(parts[2]).ok_or("bad signature encoding")?;
    ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &sig,
        )
        .map_err(|_| "bad signature".to_string())?;
    fake_google::decode_jwt_payload(token).ok_or_else(|| "bad payload".into())
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
    let claims = fake_google::decode_jwt_payload(t["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["iss"], "https://accounts.google.com");

    fake.set(|c| c.discovery_error = Some(503));
    assert_eq!(get(&fake.discovery_url(), &[]).status, 503);
    assert_eq!(fake.discovery_fetches(), 3);
}

#[test]
fn google_code_flow_signs_id_tokens_verifiable_against_the_jwks() {
    let fake = google();
    let a = get(
        &go_authorize_url(
            &fake,
            &[
                ("hd", Some("example.com")),
                ("login_hint", Some("ana.silva@gmail.com")),
            ],
        ),
        &[],
    );
    assert_eq!(a.status, 302, "{}", a.body);
    let location = a.location.unwrap();
    let params = fake_google::query_params(&location);
    let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    // Google's callback: no `iss`.
    assert_eq!(names, ["state", "code", "scope", "authuser", "prompt"]);
    assert_eq!(
        fake_google::param(&params, "scope"),
        Some("openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile")
    );
    assert_eq!(fake_google::param(&params, "prompt"), Some("consent"));
    let code = go_code(&location);
    let recorded = fake.authorize_requests();
    for (k, v) in [
        ("hd", "example.com"),
        ("nonce", "n-0S6_WzA2Mj"),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ] {
        assert_eq!(fake_google::param(&recorded[0], k), Some(v));
    }

    let t = go_redeem(&fake, &code, &[]);
    assert_eq!(t.status, 200, "{}", t.body);
    let j = t.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["expires_in"], 3599);
    assert!(j["access_token"].as_str().unwrap().starts_with("ya29."));
    assert!(j["refresh_token"].as_str().unwrap().starts_with("1//"));
    let id_token = j["id_token"].as_str().unwrap();
    let header = fake_google::decode_jwt_header(id_token).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], fake.current_kid());
    let jwks = jwks_over_http(&fake);
    assert_eq!(jwks, fake.jwks());
    assert_eq!(fake.jwks_fetches(), 1);
    let claims = verify_rs256(id_token, &jwks).unwrap();
    let user = fake.config().user;
    assert_eq!(claims["iss"], fake.base_url());
    assert_eq!(claims["aud"], fake_google::DEFAULT_CLIENT_ID);
    assert_eq!(claims["azp"], fake_google::DEFAULT_CLIENT_ID);
    assert_eq!(claims["sub"], user.sub);
    assert!(claims["sub"]
        .as_str()
        .unwrap()
        .bytes()
        .all(|b| b.is_ascii_digit()));
    assert_eq!(claims["email"], "ana.silva@gmail.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["name"], "Ana Silva");
    assert!(
        claims.get("hd").is_none(),
        "hd is a hint, not a claim for consumer accounts"
    );
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(iat <= now() && exp == iat + 3600);
    let at_hash = ring::digest::digest(
        &ring::digest::SHA256,
        j["access_token"].as_str().unwrap().as_bytes(),
    );
    assert_eq!(
        claims["at_hash"],
        fake_google::b64url_encode(&at_hash.as_ref()[..16])
    );
    assert_eq!(fake.issued_id_tokens(), vec![id_token.to_string()]);

    // Userinfo with the access token.
    let ui = get(
        &fake.userinfo_url(),
        &[(
            "Authorization",
            &format!("Bearer {}", j["access_token"].as_str().unwrap()),
        )],
    );
    assert_eq!(ui.status, 200, "{}", ui.body);
    assert_eq!(ui.json()["sub"], user.sub);
    assert_eq!(ui.json()["email_verified"], true);

    // Refresh: a new access token and id_token (no nonce), no new refresh token.
    let r = post_form(
        &fake.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", j["refresh_token"].as_str().unwrap()),
        ],
        &[(
            "Authorization",
            &basic(
                fake_google::DEFAULT_CLIENT_ID,
                fake_google::DEFAULT_CLIENT_SECRET,
            ),
        )],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = r.json();
    assert!(r.get("refresh_token").is_none());
    let claims = verify_rs256(r["id_token"].as_str().unwrap(), &jwks).unwrap();
    assert_eq!(claims["sub"], user.sub);
    assert!(claims.get("nonce").is_none());
    assert_eq!(fake.refreshes(), 1);

    // Revoking the refresh token ends it and the access it granted.
    let rv = post_form(
        &fake.revoke_url(),
        &[("token", j["refresh_token"].as_str().unwrap())],
        &[],
    );
    assert_eq!(rv.status, 200);
    assert_eq!(fake.revocations(), 1);
    let again = post_form(
        &fake.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", fake_google::DEFAULT_CLIENT_ID),
            ("client_secret", fake_google::DEFAULT_CLIENT_SECRET),
            ("refresh_token", j["refresh_token"].as_str().unwrap()),
        ],
        &[],
    );
    assert_eq!(again.status, 400);
    assert_eq!(again.json()["error"], "invalid_grant");
    let ui = get(
        &fake.userinfo_url(),
        &[(
            "Authorization",
            &format!("Bearer {}", r["access_token"].as_str().unwrap()),
        )],
    );
    assert_eq!(ui.status, 401);
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
        fake_google::param(&fake_google::query_params(&location), "prompt"),
        Some("none")
    );
}

#[test]
fn google_token_errors() {
    let fake = google();
    let user = fake.config().user;
    let code = go_code(&fake.sign_in(&go_authorize_url(&fake, &[]), &user).unwrap());
    let check = |a: Answer, status: u16, error: &str, description: &str| {
        assert_eq!(a.status, status, "{}", a.body);
        assert_eq!(
            a.json(),
            json!({"error": error, "error_description": description})
        );
    };
    check(
        go_redeem(&fake, &code, &[("client_secret", "wrong")]),
        401,
        "invalid_client",
        "Unauthorized",
    );
    check(
        go_redeem(
            &fake,
            &code,
            &[("client_id", "1-other.apps.googleusercontent.com")],
        ),
        401,
        "invalid_client",
        "The OAuth client was not found.",
    );
    check(
        go_redeem(&fake, &code, &[("client_secret", "")]),
        400,
        "invalid_request",
        "client_secret is missing.",
    );
    check(
        go_redeem(
            &fake,
            &code,
            &[("redirect_uri", "http://127.0.0.1:9999/other")],
        ),
        400,
        "redirect_uri_mismatch",
        "Bad Request",
    );
    check(
        go_redeem(&fake, &code, &[("code_verifier", "")]),
        400,
        "invalid_grant",
        "Missing code verifier.",
    );
    check(
        go_redeem(
            &fake,
            &code,
            &[("code_verifier", &fake_google::pkce_verifier())],
        ),
        400,
        "invalid_grant",
        "Invalid code verifier.",
    );
    check(
        go_redeem(&fake, &code, &[("grant_type", "password")]),
        400,
        "unsupported_grant_type",
        "Invalid grant_type: password",
    );
    assert_eq!(fake.redeemed_codes(), 0);
    // The code survived the failures; it is one-time.
    assert_eq!(go_redeem(&fake, &code, &[]).status, 200);
    check(
        go_redeem(&fake, &code, &[]),
        400,
        "invalid_grant",
        "Bad Request",
    );
    check(
        go_redeem(&fake, "4/0Anonsense", &[]),
        400,
        "invalid_grant",
        "Malformed auth code.",
    );
    assert_eq!(fake.redeemed_codes(), 1);

    fake.set(|c| c.code_lifetime = Duration::ZERO);
    let code = go_code(&fake.sign_in(&go_authorize_url(&fake, &[]), &user).unwrap());
    check(
        go_redeem(&fake, &code, &[]),
        400,
        "invalid_grant",
        "Bad Request",
    );

    fake.set(|c| {
        c.code_lifetime = Duration::from_secs(600);
        c.token_error = Some((503, "temporarily_unavailable".into(), "Try again".into()));
    });
    let code = go_code(&fake.sign_in(&go_authorize_url(&fake, &[]), &user).unwrap());
    check(
        go_redeem(&fake, &code, &[]),
        503,
        "temporarily_unavailable",
        "Try again",
    );
    fake.set(|c| c.token_error = None);
    assert_eq!(go_redeem(&fake, &code, &[]).status, 200);
}

#[test]
fn google_authorize_enforcement() {
    let fake = google();
    let user = fake.config().user;
    let page = |overrides: &[(&str, Option<&str>)], status: u16, error: &str| {
        let url = go_authorize_url(&fake, overrides);
        let a = get(&url, &[]);
        assert_eq!(
            (a.status, a.location.as_deref()),
            (status, None),
            "{overrides:?}: {}",
            a.body
        );
        assert!(a.body.contains(error), "{overrides:?}: {}", a.body);
        let err = fake.sign_in(&url, &user).unwrap_err();
        assert_eq!(err.status, status);
    };
    page(
        &[("client_id", Some("1-other.apps.googleusercontent.com"))],
        401,
        "invalid_client",
    );
    page(&[("client_id", None)], 400, "invalid_request");
    page(
        &[(
            "redirect_uri",
            Some("http://127.0.0.1:9999/broker/callback/"),
        )],
        400,
        "redirect_uri_mismatch",
    );
    page(
        &[(
            "redirect_uri",
            Some("http://localhost:9999/broker/callback"),
        )],
        400,
        "redirect_uri_mismatch",
    );
    page(&[("response_type", None)], 400, "response_type");
    page(
        &[("response_type", Some("token"))],
        400,
        "unsupported_response_type",
    );
    page(&[("scope", None)], 400, "scope");
    page(&[("scope", Some("email profile"))], 400, "openid");
    page(&[("scope", Some("openid mail"))], 400, "invalid_scope");
    page(&[("state", None)], 400, "state");
    page(
        &[("code_challenge", None), ("code_challenge_method", None)],
        400,
        "PKCE",
    );
    page(
        &[("code_challenge_method", Some("S512"))],
        400,
        "code_challenge_method",
    );
    page(
        &[("code_challenge", Some("too-short"))],
        400,
        "code_challenge",
    );
    page(&[("access_type", Some("forever"))], 400, "access_type");
    page(&[("prompt", Some("none consent"))], 400, "prompt");
    assert_eq!(fake.issued_codes(), 0);

    // Declining, or `cancel`: access_denied with the state, and nothing else.
    let url = go_authorize_url(&fake, &[]);
    fake.set(|c| c.cancel = true);
    for location in [
        fake.decline(&url).unwrap(),
        get(&url, &[]).location.unwrap(),
    ] {
        assert_eq!(
            location,
            format!(
                "{REDIRECT}?error=access_denied&state={}",
                form_urlencoded::byte_serialize(STATE.as_bytes()).collect::<String>()
            )
        );
    }
    fake.set(|c| c.cancel = false);

    // plain PKCE is accepted (Google advertises it) and checked as plain.
    let plain = "plain-verifier-plain-verifier-plain-verifier-0";
    let location = fake
        .sign_in(
            &go_authorize_url(
                &fake,
                &[
                    ("code_challenge", Some(plain)),
                    ("code_challenge_method", Some("plain")),
                ],
            ),
            &user,
        )
        .unwrap();
    let code = go_code(&location);
    assert_eq!(
        go_redeem(&fake, &code, &[]).json()["error_description"],
        "Invalid code verifier."
    );
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
    let location = fake
        .sign_in(
            &go_authorize_url(
                &fake,
                &[
                    ("state", None),
                    ("code_challenge", None),
                    ("code_challenge_method", None),
                    ("scope", Some("email")),
                ],
            ),
            &user,
        )
        .unwrap();
    let code = fake_google::param(&fake_google::query_params(&location), "code")
        .unwrap()
        .to_string();
    let t = go_redeem(&fake, &code, &[("code_verifier", "")]).json();
    assert!(
        t["access_token"].is_string() && t.get("id_token").is_none(),
        "{t}"
    );
    assert_eq!(t["scope"], "https://www.googleapis.com/auth/userinfo.email");

    assert_eq!(
        fake.sign_in("https://accounts.google.com/o/oauth2/v2/auth", &user)
            .unwrap_err()
            .status,
        0
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
        fake_google::param(&fake_google::query_params(&location), "hd"),
        Some("contoso.example")
    );
    let t = go_redeem(&fake, &go_code(&location), &[]).json();
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
    let claims = fake_google::decode_jwt_payload(t["id_token"].as_str().unwrap()).unwrap();
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
        fake_google::decode_jwt_header(&new_token).unwrap()["kid"],
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
        let claims = fake_google::decode_jwt_payload(&token).unwrap();
        (token, claims)
    };
    let kid = fake.current_kid();

    let (clean, clean_claims) = next(Tamper::Claims(json!({})));
    verify_rs256(&clean, &jwks).unwrap();

    let (t, _) = next(Tamper::ForgedSignature);
    assert_eq!(fake_google::decode_jwt_header(&t).unwrap()["kid"], kid);
    assert_eq!(verify_rs256(&t, &jwks).unwrap_err(), "bad signature");

    let (t, _) = next(Tamper::UnknownKid);
    let header = fake_google::decode_jwt_header(&t).unwrap();
    assert_eq!(header["kid"], fake.unknown_kid());
    assert!(!fake.published_kids().contains(&fake.unknown_kid()));
    assert!(verify_rs256(&t, &jwks)
        .unwrap_err()
        .starts_with("unknown kid"));

    let (t, c) = next(Tamper::WrongAud);
    verify_rs256(&t, &jwks).unwrap();
    assert_ne!(c["aud"], fake_google::DEFAULT_CLIENT_ID);
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
    let header = fake_google::decode_jwt_header(&t).unwrap();
    assert_eq!(header["alg"], "none");
    assert_eq!(c["sub"], user.sub);
    assert!(verify_rs256(&t, &jwks).is_err());

    let (t, _) = next(Tamper::Hs256WithPublicKey);
    let header = fake_google::decode_jwt_header(&t).unwrap();
    assert_eq!(
        (header["alg"].as_str(), header["kid"].as_str()),
        (Some("HS256"), Some(kid.as_str()))
    );
    let pem = fake.public_key_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let (input, sig) = t.rsplit_once('.').unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes());
    ring::hmac::verify(
        &key,
        input.as_bytes(),
        &fake_google::b64url_decode(sig).unwrap(),
    )
    .expect("HMAC keyed with the public key's PEM");
    assert!(verify_rs256(&t, &jwks).is_err());

    // One-shot: the next token is clean again; a configured tamper applies to every token.
    let (t, c) = next(Tamper::Claims(json!({})));
    verify_rs256(&t, &jwks).unwrap();
    assert_eq!(c["aud"], fake_google::DEFAULT_CLIENT_ID);
    let t = go_tokens(&fake, &user, &[]);
    verify_rs256(t["id_token"].as_str().unwrap(), &jwks).unwrap();
    fake.set(|c| c.id_token_tamper = Some(Tamper::WrongAud));
    for _ in 0..2 {
        let t = go_tokens(&fake, &user, &[]);
        let c = fake_google::decode_jwt_payload(t["id_token"].as_str().unwrap()).unwrap();
        assert_ne!(c["aud"], fake_google::DEFAULT_CLIENT_ID);
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
    let n = fake_google::b64url_decode(jwk["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "2048-bit modulus");
    assert!(der.windows(n.len()).any(|w| w == n.as_slice()));
    assert!(der.ends_with(&[0x02, 0x03, 0x01, 0x00, 0x01]), "e = 65537");
}
