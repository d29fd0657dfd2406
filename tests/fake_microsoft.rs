//! Tests of the fake Microsoft identity platform + Graph used by the broker tests.

use crate::support;

use support::fake_microsoft;

use std::time::{Duration, Instant};

use fake_microsoft::*;
use serde_json::Value;

const REDIRECT: &str = "http://127.0.0.1:9999/m365/callback";
const SCOPES: &str = "openid profile email offline_access User.Read Mail.Read";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

fn fake() -> FakeMicrosoft {
    FakeMicrosoft::start_with(FakeConfig {
        redirect_uris: vec![REDIRECT.into()],
        ..FakeConfig::default()
    })
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn read(mut resp: ureq::http::Response<ureq::Body>) -> Answer {
    Answer {
        status: resp.status().as_u16(),
        location: resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string()),
        body: resp.body_mut().read_to_string().unwrap(),
    }
}

fn get(url: &str) -> Answer {
    read(agent().get(url).call().unwrap())
}

fn get_bearer(url: &str, token: &str) -> Answer {
    read(
        agent()
            .get(url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap(),
    )
}

fn post_form(url: &str, pairs: &[(&str, &str)]) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    read(
        agent()
            .post(url)
            .content_type("application/x-www-form-urlencoded")
            .send(body)
            .unwrap(),
    )
}

fn authorize_url(fake: &FakeMicrosoft, tenant: &str, overrides: &[(&str, Option<&str>)]) -> String {
    let challenge = pkce_challenge(VERIFIER);
    let mut pairs: Vec<(&str, Option<&str>)> = vec![
        ("client_id", Some("test-client-id")),
        ("response_type", Some("code")),
        ("redirect_uri", Some(REDIRECT)),
        ("scope", Some(SCOPES)),
        ("state", Some("st-ä/+= 1")),
        ("code_challenge", Some(&challenge)),
        ("code_challenge_method", Some("S256")),
        ("response_mode", Some("query")),
    ];
    for (k, v) in overrides {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = *v,
            None => pairs.push((k, *v)),
        }
    }
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        if let Some(v) = v {
            ser.append_pair(k, v);
        }
    }
    format!("{}?{}", fake.authorize_endpoint(tenant), ser.finish())
}

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/// Runs /authorize and returns the code from the redirect.
fn sign_in(fake: &FakeMicrosoft, overrides: &[(&str, Option<&str>)]) -> String {
    let a = get(&authorize_url(fake, "organizations", overrides));
    assert_eq!(a.status, 302, "{}", a.body);
    let location = a.location.unwrap();
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    let params = query_params(&location);
    param(&params, "code").expect("code").to_string()
}

fn redeem(fake: &FakeMicrosoft, code: &str, extra: &[(&str, &str)]) -> Answer {
    let mut pairs = vec![
        ("grant_type", "authorization_code"),
        ("client_id", "test-client-id"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
        ("scope", "User.Read Mail.Read"),
    ];
    for (k, v) in extra {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v,
            None => pairs.push((k, v)),
        }
    }
    pairs.retain(|(_, v)| !v.is_empty());
    post_form(&fake.token_endpoint("organizations"), &pairs)
}

fn description(a: &Answer) -> String {
    a.json()["error_description"].as_str().unwrap().to_string()
}

#[test]
fn pkce_challenge_matches_rfc7636_example() {
    assert_eq!(
        pkce_challenge(VERIFIER),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    assert_eq!(pkce_verifier().len(), 43);
    assert_ne!(pkce_verifier(), pkce_verifier());
}

#[test]
fn base64_round_trips() {
    for n in 0..40 {
        let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        let enc = b64url_encode(&data);
        assert!(!enc.contains('='));
        assert_eq!(b64_decode(&enc).unwrap(), data);
    }
    assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
    assert_eq!(b64_decode("+/8=").unwrap(), b"\xfb\xff");
    assert!(b64_decode("a").is_none());
    assert!(b64_decode("a*cd").is_none());
}

#[test]
fn happy_path_code_token_graph() {
    let fake = fake();
    let a = get(&authorize_url(
        &fake,
        "organizations",
        &[
            ("login_hint", Some("ana.silva@contoso.example")),
            ("nonce", Some("n-1")),
        ],
    ));
    assert_eq!(a.status, 302);
    let location = a.location.unwrap();
    let params = query_params(&location);
    assert_eq!(param(&params, "state"), Some("st-ä/+= 1"));
    let code = param(&params, "code").unwrap().to_string();
    assert!(code.len() > 40);
    assert_eq!(fake.issued_codes(), 1);

    let recorded = fake.authorize_requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        param(&recorded[0], "login_hint"),
        Some("ana.silva@contoso.example")
    );
    assert_eq!(param(&recorded[0], "code_challenge_method"), Some("S256"));

    let t = redeem(&fake, &code, &[]);
    assert_eq!(t.status, 200, "{}", t.body);
    let j = t.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["expires_in"], 3600);
    assert_eq!(j["scope"], "User.Read Mail.Read");
    assert!(j["refresh_token"].as_str().is_some());
    let claims = decode_jwt_payload(j["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["tid"], DEFAULT_TENANT_ID);
    assert_eq!(claims["aud"], "test-client-id");
    assert_eq!(claims["preferred_username"], "ana.silva@contoso.example");
    assert_eq!(claims["email"], "ana.silva@contoso.example");
    assert_eq!(claims["oid"], fake.config().user_oid);
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(
        claims["iss"],
        format!("{}/{}/v2.0", fake.base_url(), DEFAULT_TENANT_ID)
    );
    assert_eq!(fake.redeemed_codes(), 1);
    let tr = fake.token_requests();
    assert_eq!(param(&tr[0], "code_verifier"), Some(VERIFIER));

    let me = get_bearer(&fake.graph_me_url(), j["access_token"].as_str().unwrap());
    assert_eq!(me.status, 200, "{}", me.body);
    let me = me.json();
    assert_eq!(me["mail"], "ana.silva@contoso.example");
    assert_eq!(me["userPrincipalName"], "ana.silva@contoso.example");
    assert_eq!(me["displayName"], "Ana Silva");
    assert_eq!(fake.graph_calls(), 1);

    let sel = get_bearer(
        &format!("{}?$select=mail,id", fake.graph_me_url()),
        j["access_token"].as_str().unwrap(),
    )
    .json();
    assert_eq!(sel["mail"], "ana.silva@contoso.example");
    assert!(sel.get("displayName").is_none());
}

#[test]
fn refresh_token_grant_rotates() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    let j = redeem(&fake, &code, &[]).json();
    let rt = j["refresh_token"].as_str().unwrap();
    let r = post_form(
        &fake.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "test-client-id"),
            ("refresh_token", rt),
            ("scope", "User.Read"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = r.json();
    assert_ne!(r["refresh_token"], j["refresh_token"]);
    assert_ne!(r["access_token"], j["access_token"]);
    assert_eq!(r["scope"], "User.Read");
    assert_eq!(fake.refreshes(), 1);
    fake.expire_access_tokens();
    let me = get_bearer(&fake.graph_me_url(), r["access_token"].as_str().unwrap());
    assert_eq!(me.status, 401);
    assert!(me.body.contains("expired"));
}

#[test]
fn wrong_verifier_rejected_and_code_still_usable() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    let t = redeem(
        &fake,
        &code,
        &[(
            "code_verifier",
            "Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFy",
        )],
    );
    assert_eq!(t.status, 400);
    assert_eq!(t.json()["error"], "invalid_grant");
    assert!(description(&t).starts_with("AADSTS501481:"), "{}", t.body);
    assert_eq!(t.json()["error_codes"][0], 501481);
    assert!(t.json()["trace_id"].as_str().is_some());
    // Missing verifier.
    let t = redeem(&fake, &code, &[("code_verifier", "")]);
    assert_eq!(t.status, 400);
    assert_eq!(t.json()["error"], "invalid_grant");
    assert_eq!(fake.redeemed_codes(), 0);
}

#[test]
fn codes_are_one_time() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    assert_eq!(redeem(&fake, &code, &[]).status, 200);
    let again = redeem(&fake, &code, &[]);
    assert_eq!(again.status, 400);
    assert_eq!(again.json()["error"], "invalid_grant");
    assert!(description(&again).starts_with("AADSTS54005:"));
    let unknown = redeem(&fake, "1.Anot-a-code", &[]);
    assert_eq!(unknown.status, 400);
    assert!(description(&unknown).starts_with("AADSTS70000:"));
    assert_eq!(fake.redeemed_codes(), 1);
}

#[test]
fn codes_expire() {
    let fake = fake();
    fake.set(|c| c.code_lifetime = Duration::from_millis(50));
    let code = sign_in(&fake, &[]);
    std::thread::sleep(Duration::from_millis(120));
    let t = redeem(&fake, &code, &[]);
    assert_eq!(t.status, 400);
    assert!(description(&t).starts_with("AADSTS70008:"));
}

#[test]
fn redirect_uri_mismatch_at_authorize_shows_page_without_redirect() {
    let fake = fake();
    for bad in [
        "http://127.0.0.1:9999/m365/callback/",
        "http://127.0.0.1:9999/m365/callback?x=1",
        "https://evil.example/m365/callback",
    ] {
        let a = get(&authorize_url(
            &fake,
            "organizations",
            &[("redirect_uri", Some(bad))],
        ));
        assert_eq!(a.status, 400);
        assert!(a.location.is_none());
        assert!(a.body.contains("AADSTS50011"), "{}", a.body);
    }
    let a = get(&authorize_url(
        &fake,
        "organizations",
        &[("client_id", Some("other"))],
    ));
    assert_eq!(a.status, 400);
    assert!(a.location.is_none());
    assert!(a.body.contains("AADSTS700016"));
    assert_eq!(fake.issued_codes(), 0);
    assert_eq!(fake.authorize_requests().len(), 4);
}

#[test]
fn redirect_uri_with_query_gets_ampersand() {
    let fake = fake();
    let with_query = "http://127.0.0.1:9999/cb?app=1";
    fake.set(|c| c.redirect_uris.push(with_query.into()));
    let a = get(&authorize_url(
        &fake,
        "common",
        &[("redirect_uri", Some(with_query))],
    ));
    assert_eq!(a.status, 302);
    let loc = a.location.unwrap();
    assert!(
        loc.starts_with("http://127.0.0.1:9999/cb?app=1&code="),
        "{loc}"
    );
}

#[test]
fn redirect_uri_mismatch_at_token() {
    let fake = fake();
    let other = "http://127.0.0.1:9999/other";
    fake.set(|c| c.redirect_uris.push(other.into()));
    let code = sign_in(&fake, &[]);
    let t = redeem(&fake, &code, &[("redirect_uri", other)]);
    assert_eq!(t.status, 400);
    assert_eq!(t.json()["error"], "invalid_grant");
    assert!(description(&t).starts_with("AADSTS500112:"));
    assert_eq!(redeem(&fake, &code, &[]).status, 200);
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
    ] {
        let a = get(&authorize_url(&fake, "organizations", &overrides));
        assert_eq!(a.status, 302, "{overrides:?}");
        let params = query_params(&a.location.unwrap());
        assert_eq!(
            param(&params, "error"),
            Some("invalid_request"),
            "{overrides:?}"
        );
        assert_eq!(param(&params, "state"), Some("st-ä/+= 1"));
        assert!(param(&params, "code").is_none());
    }
    let a = get(&authorize_url(
        &fake,
        "organizations",
        &[("response_type", Some("token"))],
    ));
    let params = query_params(&a.location.unwrap());
    assert_eq!(param(&params, "error"), Some("unsupported_response_type"));
    assert_eq!(fake.issued_codes(), 0);
}

#[test]
fn confidential_client_needs_its_secret() {
    let fake = fake();
    fake.set(|c| c.client_secret = Some("s3cret~value".into()));
    let code = sign_in(&fake, &[]);
    let t = redeem(&fake, &code, &[]);
    assert_eq!(t.status, 401);
    assert_eq!(t.json()["error"], "invalid_client");
    assert!(description(&t).starts_with("AADSTS7000218:"));
    let t = redeem(&fake, &code, &[("client_secret", "wrong")]);
    assert_eq!(t.status, 401);
    assert!(description(&t).starts_with("AADSTS7000215:"));
    let t = redeem(&fake, &code, &[("client_secret", "s3cret~value")]);
    assert_eq!(t.status, 200, "{}", t.body);
    // HTTP Basic works too.
    let code = sign_in(&fake, &[]);
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .finish();
    let basic = b64url_encode(b"test-client-id:s3cret~value")
        .replace('-', "+")
        .replace('_', "/");
    let r = read(
        agent()
            .post(&fake.token_endpoint("organizations"))
            .header("Authorization", &format!("Basic {basic}"))
            .content_type("application/x-www-form-urlencoded")
            .send(body)
            .unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn public_client_must_not_send_a_secret() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    let t = redeem(&fake, &code, &[("client_secret", "anything")]);
    assert_eq!(t.status, 401);
    assert!(description(&t).starts_with("AADSTS700025:"));
}

#[test]
fn cancel_redirects_access_denied() {
    let fake = fake();
    fake.set(|c| c.cancel = true);
    let a = get(&authorize_url(&fake, "organizations", &[]));
    assert_eq!(a.status, 302);
    let loc = a.location.unwrap();
    let params = query_params(&loc);
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert!(param(&params, "error_description")
        .unwrap()
        .starts_with("AADSTS65004:"));
    assert_eq!(param(&params, "state"), Some("st-ä/+= 1"));
    assert!(param(&params, "code").is_none());
    assert_eq!(fake.issued_codes(), 0);
}

#[test]
fn refresh_token_only_with_offline_access_and_not_when_omitted() {
    let fake = fake();
    let code = sign_in(&fake, &[("scope", Some("openid profile User.Read"))]);
    let j = redeem(&fake, &code, &[("scope", "User.Read")]).json();
    assert!(j.get("refresh_token").is_none());
    assert!(j.get("id_token").is_some());

    fake.set(|c| c.omit_refresh_token = true);
    let code = sign_in(&fake, &[]);
    let j = redeem(&fake, &code, &[]).json();
    assert!(j.get("refresh_token").is_none());
    assert!(j["access_token"].as_str().is_some());
}

#[test]
fn id_token_only_with_openid_and_claims_by_scope() {
    let fake = fake();
    let code = sign_in(&fake, &[("scope", Some("offline_access User.Read"))]);
    let j = redeem(&fake, &code, &[("scope", "")]).json();
    assert!(j.get("id_token").is_none());
    assert!(j["refresh_token"].as_str().is_some());

    let code = sign_in(&fake, &[("scope", Some("openid User.Read"))]);
    let j = redeem(&fake, &code, &[("scope", "")]).json();
    let claims = decode_jwt_payload(j["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["tid"], DEFAULT_TENANT_ID);
    assert!(claims.get("oid").is_none());
    assert!(claims.get("email").is_none());
}

#[test]
fn token_scope_beyond_consent_is_refused() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    let t = redeem(&fake, &code, &[("scope", "Mail.ReadWrite")]);
    assert_eq!(t.status, 400);
    assert!(description(&t).starts_with("AADSTS65001:"));
}

#[test]
fn user_identity_is_configurable() {
    let fake = fake();
    fake.set(|c| {
        c.user_mail = None;
        c.user_tid = Some("99999999-0000-0000-0000-000000000000".into());
    });
    let code = sign_in(&fake, &[]);
    let j = redeem(&fake, &code, &[]).json();
    let claims = decode_jwt_payload(j["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["tid"], "99999999-0000-0000-0000-000000000000");
    assert!(claims.get("email").is_none());
    let me = get_bearer(&fake.graph_me_url(), j["access_token"].as_str().unwrap()).json();
    assert_eq!(me["mail"], Value::Null);
}

#[test]
fn unknown_tenant() {
    let fake = fake();
    let a = get(&authorize_url(&fake, "contoso-unknown", &[]));
    assert_eq!(a.status, 400);
    assert!(a.location.is_none());
    assert!(a.body.contains("AADSTS90002"));
    let code = sign_in(&fake, &[]);
    let t = post_form(
        &fake.token_endpoint("22222222-0000-0000-0000-000000000000"),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "test-client-id"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    );
    assert_eq!(t.status, 400);
    assert!(description(&t).starts_with("AADSTS90002:"));
    // The configured tenant id and `common` work.
    assert_eq!(
        get(&authorize_url(&fake, DEFAULT_TENANT_ID, &[])).status,
        302
    );
    assert_eq!(get(&authorize_url(&fake, "common", &[])).status, 302);
}

#[test]
fn graph_rejects_unknown_or_missing_tokens_and_can_fail() {
    let fake = fake();
    let me = get_bearer(&fake.graph_me_url(), "not-a-token");
    assert_eq!(me.status, 401);
    assert_eq!(me.json()["error"]["code"], "InvalidAuthenticationToken");
    let me = get(&fake.graph_me_url());
    assert_eq!(me.status, 401);

    let code = sign_in(&fake, &[]);
    let at = redeem(&fake, &code, &[]).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    fake.set(|c| c.graph_fail = true);
    assert_eq!(get_bearer(&fake.graph_me_url(), &at).status, 500);
    fake.set(|c| c.graph_fail = false);
    assert_eq!(get_bearer(&fake.graph_me_url(), &at).status, 200);
    assert_eq!(fake.graph_calls(), 4);
}

#[test]
fn injected_token_error_and_delay() {
    let fake = fake();
    let code = sign_in(&fake, &[]);
    fake.set(|c| {
        c.token_error = Some((
            400,
            "invalid_grant".into(),
            "AADSTS50011: The redirect URI does not match".into(),
        ))
    });
    let t = redeem(&fake, &code, &[]);
    assert_eq!(t.status, 400);
    assert_eq!(t.json()["error_codes"][0], 50011);
    fake.set(|c| {
        c.token_error = None;
        c.token_delay = Duration::from_millis(400);
    });
    // A slow token endpoint does not block Graph (several workers).
    let slow = {
        let url = fake.token_endpoint("organizations");
        std::thread::spawn(move || {
            let started = Instant::now();
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", "authorization_code"),
                    ("client_id", "test-client-id"),
                    ("code", code.as_str()),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", VERIFIER),
                ])
                .finish();
            let r = read(
                agent()
                    .post(&url)
                    .content_type("application/x-www-form-urlencoded")
                    .send(body)
                    .unwrap(),
            );
            (r.status, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    assert_eq!(get(&fake.graph_me_url()).status, 401);
    assert!(started.elapsed() < Duration::from_millis(300));
    let (status, took) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(400));
}

#[test]
fn drop_does_not_hang_during_a_slow_request() {
    let fake = fake();
    fake.set(|c| c.token_delay = Duration::from_secs(30));
    let url = fake.token_endpoint("organizations");
    let client = std::thread::spawn(move || {
        let _ = agent()
            .post(&url)
            .content_type("application/x-www-form-urlencoded")
            .send("grant_type=authorization_code");
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    drop(fake);
    assert!(started.elapsed() < Duration::from_secs(5));
    client.join().unwrap();
}

#[test]
fn other_paths_404_and_token_get_is_refused() {
    let fake = fake();
    assert_eq!(get(&format!("{}/nope", fake.base_url())).status, 404);
    let t = get(&fake.token_endpoint("organizations"));
    assert_eq!(t.status, 400);
    assert!(description(&t).starts_with("AADSTS900561:"));
}
