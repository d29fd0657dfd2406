//! The broker with Google (kind `google`) end to end: the real binary against the fake Google
//! (tests/support/fake_google.rs): discovery at start-up, PKCE, a nonce, RS256 id_tokens checked
//! against the JWKS, a refresh token only with `access_type=offline` and `prompt=consent`, and
//! the hostile id_tokens the fake can forge. Every one must fail closed as `id_token_invalid`,
//! with the JWKS module's own reason in the audit log only.

use crate::support;

use support::fake_google;

use fake_google::{FakeGoogle, FakeGoogleConfig, GoogleUser, Tamper};
use serde_json::{json, Value};
use support::broker::{providers_env, start_up_fails, Broker, Planned};
use support::get_url;

const EMAIL: &str = "ana.silva@gmail.com";
const SUB: &str = "108236457120987654321";

struct Setup {
    fake: FakeGoogle,
    broker: Broker,
}

fn settings(fake: &FakeGoogle, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let cfg = fake.config();
    let mut vars: Vec<(&str, String)> = vec![
        ("KIND", "google".into()),
        ("CLIENT_ID", cfg.client_id.clone()),
        ("CLIENT_SECRET", cfg.client_secret.clone()),
        // The fake's issuer is its loopback URL; Google's own is the default.
        ("ISSUER", fake.issuer()),
    ];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k, v.to_string()));
    }
    vars
}

/// The fake Google and a broker with it as provider `google`.
fn setup(tweak: impl FnOnce(&mut FakeGoogleConfig), extra: &[(&'static str, &str)]) -> Setup {
    let planned = Planned::new();
    let mut cfg = FakeGoogleConfig {
        redirect_uris: vec![planned.callback("google")],
        ..FakeGoogleConfig::default()
    };
    tweak(&mut cfg);
    let fake = FakeGoogle::start_with(cfg);
    let broker = planned.start(&providers_env(&[("google", settings(&fake, extra))]));
    Setup { fake, broker }
}

/// The person at the authorize URL signs in as the fake's configured user.
fn browse(authorize: &str) -> String {
    let res = get_url(authorize);
    assert_eq!(res.status, 302, "the fake refused: {}", res.text());
    res.header("Location").unwrap().to_string()
}

impl Setup {
    fn session(&self) -> Value {
        self.broker
            .session("google", json!({ "expected_email": EMAIL }))
    }

    fn sign_in(&self, session: &Value) -> support::HttpResponse {
        self.broker.sign_in(session, browse)
    }

    /// Signs in expecting `reason` and a JWKS `detail` in the audit log.
    fn fails(&self, reason: &str, status: u16, words: &str) -> Value {
        let session = self.session();
        let page = self.sign_in(&session);
        self.broker
            .assert_failed(&session, &page, reason, status, words);
        self.broker.audit_line(&session, "callback_failed")
    }
}

#[test]
fn a_person_signs_in_with_google_and_the_caller_gets_the_tokens_once() {
    let s = setup(|_| {}, &[]);
    assert_eq!(s.fake.discovery_fetches(), 1, "discovered at start-up");
    let session = s.session();
    let page = s.sign_in(&session);
    let t = s
        .broker
        .assert_connected(&session, &page, "Google connected");
    assert_eq!(t["subject"], SUB);
    assert_eq!(t["email"], EMAIL);
    assert_eq!(t["email_verified"], true);
    assert!(
        t["refresh_token"].as_str().is_some_and(|r| !r.is_empty()),
        "{t}"
    );
    assert!(t["id_token"].is_string() && t["expiry"].is_string(), "{t}");
    let sent = &s.fake.authorize_requests()[0];
    let p = |k| fake_google::param(sent, k);
    assert_eq!(p("access_type"), Some("offline"));
    assert_eq!(p("prompt"), Some("consent"));
    assert_eq!(p("code_challenge_method"), Some("S256"));
    assert_eq!(p("login_hint"), Some(EMAIL));
    assert_eq!(p("scope"), Some("openid email"));
    assert!(p("nonce").is_some_and(|n| n.len() >= 22));
    assert_eq!(p("hd"), None);
    assert_eq!(s.fake.jwks_fetches(), 1);
}

#[test]
fn forged_and_misdirected_id_tokens_fail_closed() {
    let s = setup(|_| {}, &[]);
    for (tamper, jwks_reason) in [
        (Tamper::ForgedSignature, "id_token_signature"),
        (Tamper::UnknownKid, "id_token_unknown_key"),
        (Tamper::WrongAud, "id_token_audience"),
        (Tamper::WrongIss, "id_token_issuer"),
        (Tamper::WrongNonce, "id_token_nonce"),
        (Tamper::Expired, "id_token_expired"),
        (Tamper::IssuedInFuture, "id_token_not_yet_valid"),
        (Tamper::AlgNone, "id_token_algorithm"),
        (Tamper::Hs256WithPublicKey, "id_token_algorithm"),
    ] {
        s.fake.set_next_id_token_tamper(tamper.clone());
        let line = s.fails("id_token_invalid", 502, "could not connect");
        let detail = line["detail"].as_str().unwrap();
        assert!(detail.starts_with(jwks_reason), "{tamper:?}: {detail}");
    }
}

#[test]
fn a_replayed_id_token_fails_on_its_nonce() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    assert_eq!(s.sign_in(&session).status, 200);
    // The previous sign-in's id_token, validly signed, in a new sign-in's token response.
    s.fake.set_next_id_token_tamper(Tamper::ReplayPrevious);
    let line = s.fails("id_token_invalid", 502, "could not connect");
    assert!(line["detail"]
        .as_str()
        .unwrap()
        .starts_with("id_token_nonce"));
}

#[test]
fn an_unverified_address_does_not_count() {
    let s = setup(|c| c.user.email_verified = false, &[]);
    s.fails("email_unverified", 403, "not verified");
    // "true" as a string is not a verification.
    let s = setup(
        |c| c.id_token_tamper = Some(Tamper::Claims(json!({ "email_verified": "true" }))),
        &[],
    );
    s.fails("email_unverified", 403, "not verified");
}

#[test]
fn another_account_fails_closed() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    let bob = GoogleUser::new("1", "bob@gmail.com");
    let page = s
        .broker
        .sign_in(&session, |url| s.fake.sign_in(url, &bob).unwrap());
    s.broker.assert_failed(
        &session,
        &page,
        "email_mismatch",
        403,
        "different Google account",
    );
}

#[test]
fn a_hosted_domain_is_required_of_the_verified_token() {
    let workspace = GoogleUser::workspace("2", "ana@example.com", "example.com");
    let s = setup(
        |c| c.user = workspace.clone(),
        &[("HOSTED_DOMAIN", "Example.com")],
    );
    let session = s
        .broker
        .session("google", json!({ "expected_email": "ana@example.com" }));
    let page = s.sign_in(&session);
    let t = s
        .broker
        .assert_connected(&session, &page, "Google connected");
    assert_eq!(t["email"], "ana@example.com");
    assert_eq!(
        fake_google::param(&s.fake.authorize_requests()[0], "hd"),
        Some("example.com"),
        "hd is sent as a hint"
    );
    for user in [
        GoogleUser::workspace("3", "ana@example.com", "other.example"),
        // A consumer account has no hd at all.
        GoogleUser::new("4", "ana@example.com"),
    ] {
        let session = s
            .broker
            .session("google", json!({ "expected_email": "ana@example.com" }));
        let page = s
            .broker
            .sign_in(&session, |url| s.fake.sign_in(url, &user).unwrap());
        s.broker.assert_failed(
            &session,
            &page,
            "hosted_domain_mismatch",
            403,
            "organization is not allowed",
        );
    }
}

#[test]
fn rotated_keys_are_fetched_once_and_then_trusted() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    assert_eq!(s.sign_in(&session).status, 200);
    assert_eq!(s.fake.jwks_fetches(), 1);
    // Past the broker's one-second floor between JWKS fetches (src/provider/oidc.rs): a
    // provider's rotation comes long after the last fetch, not within the second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    s.fake.rotate_keys();
    s.fake.unpublish_old_keys();
    // A new kid: one refetch finds it, and the next sign-in uses the cached keys.
    for _ in 0..2 {
        let session = s.session();
        let page = s.sign_in(&session);
        s.broker
            .assert_connected(&session, &page, "Google connected");
    }
    assert_eq!(s.fake.jwks_fetches(), 2);
}

#[test]
fn the_person_cancels() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    let page = s
        .broker
        .sign_in(&session, |url| s.fake.decline(url).unwrap());
    s.broker.assert_failed(
        &session,
        &page,
        "access_denied",
        200,
        "You cancelled the Google sign-in",
    );
}

#[test]
fn a_response_naming_another_issuer_is_refused_before_the_code_is_used() {
    let s = setup(|_| {}, &[]);
    let session = s.session();
    let redirect = browse(&s.broker.open(&session));
    let page = s.broker.arrive(&support::broker::with_param(
        &redirect,
        "iss",
        Some("https://attacker.example"),
    ));
    s.broker
        .assert_failed(&session, &page, "issuer_mismatch", 502, "could not connect");
    assert_eq!(s.fake.redeemed_codes(), 0);
    // Its own issuer is fine (Google does not promise iss, so it may also be absent).
    let session = s.session();
    let redirect = browse(&s.broker.open(&session));
    let page = s.broker.arrive(&support::broker::with_param(
        &redirect,
        "iss",
        Some(&s.fake.issuer()),
    ));
    assert_eq!(page.status, 200, "{}", page.text());
}

#[test]
fn discovery_that_fails_or_names_another_issuer_stops_start_up() {
    let base = |issuer: String| {
        let mut env = vec![
            (
                "OAUTH_RELAY_PUBLIC_URL".to_string(),
                "http://127.0.0.1:1".to_string(),
            ),
            (
                "OAUTH_RELAY_BROKER_TOKEN".to_string(),
                support::broker::BROKER_TOKEN.to_string(),
            ),
        ];
        env.extend(providers_env(&[(
            "google",
            vec![
                ("KIND", "google".into()),
                ("CLIENT_ID", "c".into()),
                ("CLIENT_SECRET", "s".into()),
                ("ISSUER", issuer),
            ],
        )]));
        env
    };
    let down = FakeGoogle::start_with(FakeGoogleConfig {
        discovery_error: Some(503),
        ..FakeGoogleConfig::default()
    });
    let e = start_up_fails(&base(down.issuer()));
    assert!(
        e.contains("OAUTH_RELAY_PROVIDER_GOOGLE_ISSUER") && e.contains("503"),
        "{e}"
    );
    // The configured issuer differs from the discovered one by a trailing slash: refused.
    let up = FakeGoogle::start();
    let e = start_up_fails(&base(format!("{}/", up.issuer())));
    assert!(
        e.contains("OAUTH_RELAY_PROVIDER_GOOGLE_ISSUER") && e.contains("exactly"),
        "{e}"
    );
    let e = start_up_fails(&{
        let mut env = base(up.issuer());
        env.retain(|(k, _)| k != "OAUTH_RELAY_PROVIDER_GOOGLE_CLIENT_SECRET");
        env
    });
    assert!(
        e.contains("OAUTH_RELAY_PROVIDER_GOOGLE_CLIENT_SECRET"),
        "{e}"
    );
}
