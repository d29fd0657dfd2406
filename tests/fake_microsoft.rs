//! Tests of the fake Microsoft identity platform + Graph used by the broker tests: what is
//! Microsoft's own (AADSTS errors, tenants, response modes, the confidential-client rule,
//! Entra's refresh tokens, Graph) over plain HTTP. The core they share with the other fakes is
//! tested in fake_providers.rs.

use crate::support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_client::{get, get_bearer, merged, post_form, url_with, Answer};
use support::fake_microsoft::*;

const REDIRECT: &str = "http://127.0.0.1:9999/m365/callback";
const SCOPES: &str = "openid profile email offline_access User.Read Mail.Read";
const STATE: &str = "st-ä/+= 1";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn fake() -> FakeMicrosoft {
    FakeMicrosoft::start_with(FakeConfig {
        redirect_uris: vec![REDIRECT.into()],
        ..FakeConfig::default()
    })
}

fn authorize_url(fake: &FakeMicrosoft, tenant: &str, overrides: &[(&str, Option<&str>)]) -> String {
    let challenge = pkce_challenge(VERIFIER);
    let defaults = [
        ("client_id", "test-client-id"),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("scope", SCOPES),
        ("state", STATE),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("response_mode", "query"),
    ];
    url_with(&fake.authorize_endpoint(tenant), &defaults, overrides)
}

/// The redirect's query parameters after /authorize.
fn authorize(fake: &FakeMicrosoft, overrides: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
    let a = get(&authorize_url(fake, "organizations", overrides), &[]);
    assert_eq!(a.status, 302, "{}", a.body);
    let location = a.location().unwrap();
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    query_params(&location)
}

/// Runs /authorize and returns the code from the redirect.
fn sign_in(fake: &FakeMicrosoft, overrides: &[(&str, Option<&str>)]) -> String {
    param(&authorize(fake, overrides), "code")
        .expect("code")
        .to_string()
}

fn token(fake: &FakeMicrosoft, defaults: &[(&str, &str)], extra: &[(&str, &str)]) -> Answer {
    let pairs = merged(defaults, extra);
    post_form(&fake.token_endpoint("organizations"), &pairs, &[])
}

fn redeem(fake: &FakeMicrosoft, code: &str, extra: &[(&str, &str)]) -> Answer {
    let defaults = [
        ("grant_type", "authorization_code"),
        ("client_id", "test-client-id"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
        ("scope", "User.Read Mail.Read"),
    ];
    token(fake, &defaults, extra)
}

fn refresh(fake: &FakeMicrosoft, refresh_token: &str) -> Answer {
    let defaults = [
        ("grant_type", "refresh_token"),
        ("client_id", "test-client-id"),
        ("refresh_token", refresh_token),
        ("scope", "User.Read"),
    ];
    token(fake, &defaults, &[])
}

/// `(status, error, AADSTS number)` of a token-endpoint error.
fn sts(a: &Answer) -> (u16, String, u64) {
    let j = a.json();
    assert!(j["trace_id"].is_string(), "{}", a.body);
    let code = j["error_codes"][0].as_u64().unwrap_or(0);
    assert!(j["error_description"]
        .as_str()
        .unwrap()
        .starts_with(&format!("AADSTS{code}:")));
    (a.status, j["error"].as_str().unwrap().to_string(), code)
}

fn e(status: u16, error: &str, code: u64) -> (u16, String, u64) {
    (status, error.to_string(), code)
}

fn str_of<'a>(j: &'a Value, key: &str) -> &'a str {
    j[key].as_str().unwrap_or_else(|| panic!("no {key} in {j}"))
}

#[test]
fn pkce_and_base64_helpers() {
    assert_eq!(
        pkce_challenge(VERIFIER),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    assert_eq!(pkce_verifier().len(), 43);
    assert_ne!(pkce_verifier(), pkce_verifier());
    for n in 0..40 {
        let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        let enc = b64url_encode(&data);
        assert!(!enc.contains('='));
        assert_eq!(b64_decode(&enc).unwrap(), data);
    }
    assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
    assert_eq!(b64_decode("+/8=").unwrap(), b"\xfb\xff");
    assert!(b64_decode("a").is_none() && b64_decode("a*cd").is_none());
}

#[test]
fn happy_path_code_token_graph() {
    let fake = fake();
    let extra = [
        ("login_hint", Some("ana.silva@contoso.example")),
        ("nonce", Some("n-1")),
    ];
    let params = authorize(&fake, &extra);
    assert_eq!(param(&params, "state"), Some(STATE));
    let code = param(&params, "code").unwrap().to_string();
    assert!(code.len() > 40);
    let recorded = fake.authorize_requests();
    assert_eq!(
        param(&recorded[0], "login_hint"),
        Some("ana.silva@contoso.example")
    );

    let t = redeem(&fake, &code, &[]);
    assert_eq!(t.status, 200, "{}", t.body);
    let j = t.json();
    assert_eq!(
        (&j["token_type"], &j["expires_in"], &j["scope"]),
        (
            &json!("Bearer"),
            &json!(3600),
            &json!("User.Read Mail.Read")
        )
    );
    assert!(j["refresh_token"].is_string());
    let claims = decode_jwt_payload(str_of(&j, "id_token")).unwrap();
    assert_eq!(claims["tid"], DEFAULT_TENANT_ID);
    assert_eq!(claims["aud"], "test-client-id");
    assert_eq!(claims["preferred_username"], "ana.silva@contoso.example");
    assert_eq!(claims["email"], "ana.silva@contoso.example");
    assert_eq!(claims["oid"], fake.config().user_oid);
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(
        claims["iss"],
        format!("{}/{DEFAULT_TENANT_ID}/v2.0", fake.base_url())
    );
    assert_eq!((fake.issued_codes(), fake.redeemed_codes()), (1, 1));
    assert_eq!(
        param(&fake.token_requests()[0], "code_verifier"),
        Some(VERIFIER)
    );

    let me = get_bearer(&fake.graph_me_url(), str_of(&j, "access_token"));
    assert_eq!(me.status, 200, "{}", me.body);
    let me = me.json();
    assert_eq!(me["mail"], "ana.silva@contoso.example");
    assert_eq!(me["userPrincipalName"], "ana.silva@contoso.example");
    assert_eq!(me["displayName"], "Ana Silva");
    let select = format!("{}?$select=mail,id", fake.graph_me_url());
    let sel = get_bearer(&select, str_of(&j, "access_token")).json();
    assert_eq!(sel["mail"], "ana.silva@contoso.example");
    assert!(sel.get("displayName").is_none());
    assert_eq!(fake.graph_calls(), 2);
}

#[test]
fn code_errors_in_microsofts_words_and_the_code_survives_them() {
    let fake = fake();
    let other = "http://127.0.0.1:9999/other";
    fake.set(|c| c.redirect_uris.push(other.into()));
    let code = sign_in(&fake, &[]);
    let wrong = "Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFy";
    for (extra, expected) in [
        (("code_verifier", wrong), e(400, "invalid_grant", 501481)),
        (("code_verifier", ""), e(400, "invalid_grant", 50148)),
        (("redirect_uri", other), e(400, "invalid_grant", 500112)),
        (("code", "1.Anot-a-code"), e(400, "invalid_grant", 70000)),
        (("scope", "Mail.ReadWrite"), e(400, "invalid_grant", 65001)),
    ] {
        assert_eq!(sts(&redeem(&fake, &code, &[extra])), expected, "{extra:?}");
    }
    assert_eq!(fake.redeemed_codes(), 0);
    assert_eq!(redeem(&fake, &code, &[]).status, 200);
    assert_eq!(
        sts(&redeem(&fake, &code, &[])),
        e(400, "invalid_grant", 54005)
    );
    fake.set(|c| c.code_lifetime = Duration::ZERO);
    let code = sign_in(&fake, &[]);
    assert_eq!(
        sts(&redeem(&fake, &code, &[])),
        e(400, "invalid_grant", 70008)
    );
    assert_eq!(fake.redeemed_codes(), 1);
}

#[test]
fn redirect_uri_and_client_mismatches_show_a_page_without_redirect() {
    let fake = fake();
    for (overrides, aadsts) in [
        (
            ("redirect_uri", Some("http://127.0.0.1:9999/m365/callback/")),
            "AADSTS50011",
        ),
        (
            (
                "redirect_uri",
                Some("http://127.0.0.1:9999/m365/callback?x=1"),
            ),
            "AADSTS50011",
        ),
        (
            ("redirect_uri", Some("https://evil.example/m365/callback")),
            "AADSTS50011",
        ),
        (("client_id", Some("other")), "AADSTS700016"),
    ] {
        let a = get(&authorize_url(&fake, "organizations", &[overrides]), &[]);
        assert_eq!((a.status, a.location()), (400, None));
        assert!(a.body.contains(aadsts), "{}", a.body);
    }
    assert_eq!(
        (fake.issued_codes(), fake.authorize_requests().len()),
        (0, 4)
    );

    // A registered redirect URI with a query gets the code after an `&`.
    let with_query = "http://127.0.0.1:9999/cb?app=1";
    fake.set(|c| c.redirect_uris.push(with_query.into()));
    let a = get(
        &authorize_url(&fake, "common", &[("redirect_uri", Some(with_query))]),
        &[],
    );
    assert!(a
        .location()
        .unwrap()
        .starts_with("http://127.0.0.1:9999/cb?app=1&code="));
}

#[test]
fn bad_pkce_or_response_type_redirects_with_invalid_request() {
    let fake = fake();
    for overrides in [
        vec![("code_challenge", None)],
        vec![("code_challenge_method", None)],
        vec![("code_challenge_method", Some("plain"))],
        vec![("code_challenge", Some("short"))],
        vec![("scope", None)],
        vec![("response_type", Some("token"))],
    ] {
        let params = authorize(&fake, &overrides);
        let expected = match overrides[0].1 {
            Some("token") => "unsupported_response_type",
            _ => "invalid_request",
        };
        assert_eq!(param(&params, "error"), Some(expected), "{overrides:?}");
        assert_eq!(param(&params, "state"), Some(STATE));
        assert!(param(&params, "code").is_none());
    }
    assert_eq!(fake.issued_codes(), 0);
}

#[test]
fn a_confidential_client_needs_its_secret_and_a_public_one_must_not_send_one() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    assert_eq!(
        sts(&redeem(&fake, &code, &[("client_secret", "anything")])),
        e(401, "invalid_client", 700025)
    );
    fake.set(|c| c.client_secret = Some("s3cret~value".into()));
    assert_eq!(
        sts(&redeem(&fake, &code, &[])),
        e(401, "invalid_client", 7000218)
    );
    assert_eq!(
        sts(&redeem(&fake, &code, &[("client_secret", "wrong")])),
        e(401, "invalid_client", 7000215)
    );
    let t = redeem(&fake, &code, &[("client_secret", "s3cret~value")]);
    assert_eq!(t.status, 200, "{}", t.body);
    // HTTP Basic works too (and Microsoft takes base64url there as well as base64).
    let code = sign_in(&fake, &[]);
    let basic = format!("Basic {}", b64url_encode(b"test-client-id:s3cret~value"));
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let r = post_form(
        &fake.token_endpoint("organizations"),
        &pairs,
        &[("Authorization", &basic)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn cancel_redirects_access_denied() {
    let fake = fake();
    fake.set(|c| c.cancel = true);
    let params = authorize(&fake, &[]);
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert!(param(&params, "error_description")
        .unwrap()
        .starts_with("AADSTS65004:"));
    assert_eq!(param(&params, "state"), Some(STATE));
    assert!(param(&params, "code").is_none());
    assert_eq!(fake.issued_codes(), 0);
}

#[test]
fn refresh_tokens_and_id_tokens_by_scope() {
    let fake = fake();
    let tokens = |scope: &str, asked: &str| {
        let code = sign_in(&fake, &[("scope", Some(scope))]);
        redeem(&fake, &code, &[("scope", asked)]).json()
    };
    let j = tokens("openid profile User.Read", "User.Read");
    assert!(j.get("refresh_token").is_none() && j["id_token"].is_string());
    let j = tokens("offline_access User.Read", "");
    assert!(j.get("id_token").is_none() && j["refresh_token"].is_string());
    let claims = decode_jwt_payload(str_of(&tokens("openid User.Read", ""), "id_token")).unwrap();
    assert_eq!(claims["tid"], DEFAULT_TENANT_ID);
    assert!(claims.get("oid").is_none() && claims.get("email").is_none());
    fake.set(|c| c.omit_refresh_token = true);
    let j = tokens(SCOPES, "");
    assert!(j.get("refresh_token").is_none() && j["access_token"].is_string());
}

#[test]
fn user_identity_is_configurable() {
    let fake = fake();
    fake.set(|c| {
        c.user_mail = None;
        c.user_tid = Some("99999999-0000-0000-0000-000000000000".into());
        c.xms_edov = Some(true);
    });
    let code = sign_in(&fake, &[]);
    let j = redeem(&fake, &code, &[]).json();
    let claims = decode_jwt_payload(str_of(&j, "id_token")).unwrap();
    assert_eq!(claims["tid"], "99999999-0000-0000-0000-000000000000");
    assert!(claims.get("email").is_none());
    assert_eq!(claims["xms_edov"], true);
    let me = get_bearer(&fake.graph_me_url(), str_of(&j, "access_token")).json();
    assert_eq!(me["mail"], Value::Null);
}

#[test]
fn unknown_tenant() {
    let fake = fake();
    let a = get(&authorize_url(&fake, "contoso-unknown", &[]), &[]);
    assert_eq!((a.status, a.location()), (400, None));
    assert!(a.body.contains("AADSTS90002"));
    let code = sign_in(&fake, &[]);
    let pairs = [
        ("grant_type", "authorization_code"),
        ("client_id", "test-client-id"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let t = post_form(
        &fake.token_endpoint("22222222-0000-0000-0000-000000000000"),
        &pairs,
        &[],
    );
    assert_eq!(sts(&t), e(400, "invalid_request", 90002));
    // The configured tenant id and `common` work.
    for tenant in [DEFAULT_TENANT_ID, "common"] {
        assert_eq!(get(&authorize_url(&fake, tenant, &[]), &[]).status, 302);
    }
}

#[test]
fn graph_rejects_unknown_or_missing_tokens_and_can_fail() {
    let fake = fake();
    let me = get_bearer(&fake.graph_me_url(), "not-a-token");
    assert_eq!(me.status, 401);
    assert_eq!(me.json()["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(get(&fake.graph_me_url(), &[]).status, 401);

    let code = sign_in(&fake, &[]);
    let j = redeem(&fake, &code, &[]).json();
    let at = str_of(&j, "access_token");
    fake.set(|c| c.graph_fail = true);
    assert_eq!(get_bearer(&fake.graph_me_url(), at).status, 500);
    fake.set(|c| c.graph_fail = false);
    assert_eq!(get_bearer(&fake.graph_me_url(), at).status, 200);
    fake.expire_access_tokens();
    let me = get_bearer(&fake.graph_me_url(), at);
    assert_eq!(me.status, 401);
    assert!(me.body.contains("expired"));
    assert_eq!(fake.graph_calls(), 5);
}

#[test]
fn an_injected_token_error_has_microsofts_shape_and_a_slow_token_endpoint_blocks_nothing_else() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    let injected = "AADSTS50011: The redirect URI does not match";
    fake.set(|c| c.token_error = Some((400, "invalid_grant".into(), injected.into())));
    assert_eq!(
        sts(&redeem(&fake, &code, &[])),
        e(400, "invalid_grant", 50011)
    );
    fake.set(|c| {
        c.token_error = None;
        c.token_delay = Duration::from_secs(600);
    });
    let url = fake.token_endpoint("organizations");
    let slow = std::thread::spawn(move || {
        let pairs = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
        ];
        let agent = support::fake_client::agent_with(true, None);
        support::fake_client::try_post_form(&agent, &url, &pairs, &[]).map(|a| a.status)
    });
    support::eventually("the token request to arrive", || {
        (fake.token_calls() == 2).then_some(())
    });
    // Graph answers while the token request is held (dropping the fake ends it).
    assert_eq!(get(&fake.graph_me_url(), &[]).status, 401);
    assert!(!slow.is_finished());
    drop(fake);
    assert!(slow.join().unwrap().is_ok());
}

#[test]
fn other_paths_404_and_token_get_is_refused() {
    let fake = fake();
    assert_eq!(get(&format!("{}/nope", fake.base_url()), &[]).status, 404);
    let t = get(&fake.token_endpoint("organizations"), &[]);
    assert_eq!(sts(&t), e(400, "invalid_request", 900561));
}

// ---------------------------------------------------------------------------------------------
// Entra's refresh tokens (RefreshPolicy::entra)

#[test]
fn entra_refresh_tokens_are_replaced_on_every_use_and_the_old_ones_keep_working() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    let j = redeem(&fake, &code, &[]).json();
    let first = str_of(&j, "refresh_token");
    let r = refresh(&fake, first);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = r.json();
    assert_ne!(r["refresh_token"], j["refresh_token"]);
    assert_ne!(r["access_token"], j["access_token"]);
    assert_eq!(r["scope"], "User.Read");
    // The used one still works, and gets yet another; every access token stays valid.
    let again = refresh(&fake, first).json();
    assert!(again["refresh_token"].is_string());
    assert_ne!(again["refresh_token"], r["refresh_token"]);
    for at in [&j, &r, &again].map(|t| str_of(t, "access_token")) {
        assert_eq!(get_bearer(&fake.graph_me_url(), at).status, 200);
    }
    let counters = fake.counters();
    assert_eq!((counters.refreshes, counters.reuse_detections), (2, 0));
    assert_eq!(
        (fake.presentations(first), fake.max_presentations()),
        (2, 2)
    );
}

#[test]
fn entra_refresh_tokens_expire_and_end_when_the_sessions_are_revoked() {
    let fake = fake();
    let with_revoke = "openid offline_access User.Read User.RevokeSessions.All";
    let tokens = |scope: &str| {
        let code = sign_in(&fake, &[("scope", Some(scope))]);
        redeem(&fake, &code, &[("scope", "")]).json()
    };
    // The lifetime is 90 days; a test shortens it.
    assert_eq!(
        fake.config().refresh_token_lifetime,
        Duration::from_secs(90 * 86_400)
    );
    fake.set(|c| c.refresh_token_lifetime = Duration::ZERO);
    let expired = tokens(SCOPES);
    assert_eq!(
        sts(&refresh(&fake, str_of(&expired, "refresh_token"))),
        e(400, "invalid_grant", 700082)
    );
    fake.set(|c| c.refresh_token_lifetime = Duration::from_secs(3600));

    // Graph's revokeSignInSessions, with the permission it needs.
    let (plain, admin) = (tokens(SCOPES), tokens(with_revoke));
    let revoke = |t: &Value| {
        let auth = format!("Bearer {}", str_of(t, "access_token"));
        post_form(
            &fake.revoke_sessions_url(),
            &[],
            &[("Authorization", &auth)],
        )
    };
    assert_eq!(revoke(&plain).status, 403);
    let done = revoke(&admin);
    assert_eq!((done.status, &done.json()["value"]), (200, &json!(true)));
    for t in [&plain, &admin] {
        let r = refresh(&fake, str_of(t, "refresh_token"));
        assert_eq!(sts(&r), e(400, "invalid_grant", 50173));
        // Access tokens are JWTs: Graph takes them until they expire.
        assert_eq!(
            get_bearer(&fake.graph_me_url(), str_of(t, "access_token")).status,
            200
        );
    }
    let counters = fake.counters();
    assert_eq!((counters.revocations, counters.grants_revoked), (1, 3));
}
