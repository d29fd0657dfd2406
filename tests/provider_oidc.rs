//! The broker with any OpenID Connect provider (kind `oidc`) end to end: the real binary, a real
//! OpenID Provider (node-oidc-provider, tests/support/oidc.rs) found by discovery, and a real
//! headless Chromium going from the login link through the provider's login and consent pages
//! back to the broker. The provider promises RFC 9207 `iss`, requires PKCE S256, signs RS256
//! id_tokens with keys it rotates at run time, and keeps e-mail in the id_token or (by choice)
//! only at its userinfo endpoint.

use crate::support;

use support::oidc;

use oidc::{OidcAccount, OidcConfig, OidcProvider};
use serde_json::{json, Value};
use support::broker::{providers_env, with_param, Broker, Catcher, Planned};

const DISPLAY: &str = "Corp SSO";

fn ana() -> OidcAccount {
    OidcConfig::ana()
}

/// The provider's settings for the broker (provider `corp`).
fn settings(provider: &OidcProvider, scopes: &str) -> Vec<(String, String)> {
    let c = provider.config();
    providers_env(&[(
        "corp",
        vec![
            ("KIND", "oidc".into()),
            ("CLIENT_ID", c.client_id.clone()),
            ("CLIENT_SECRET", c.client_secret.clone()),
            ("ISSUER", provider.issuer().to_string()),
            ("SCOPES", scopes.into()),
            ("DISPLAY_NAME", DISPLAY.into()),
        ],
    )])
}

/// A provider with `tweak`ed settings and a broker whose public URL is `planned`'s.
fn setup(planned: Planned, tweak: impl FnOnce(&mut OidcConfig)) -> (OidcProvider, Broker) {
    let mut config = OidcConfig::with_redirect_uris(&[&planned.callback("corp")]);
    tweak(&mut config);
    let provider = OidcProvider::start(config);
    let broker = planned.start(&settings(&provider, "openid email offline_access"));
    (provider, broker)
}

fn session(broker: &Broker, email: &str) -> Value {
    broker.session("corp", json!({ "expected_email": email }))
}

fn login_url(session: &Value) -> &str {
    session["login_url"].as_str().unwrap()
}

#[test]
fn a_person_signs_in_at_an_openid_provider_in_a_real_browser() {
    let (provider, broker) = setup(Planned::new(), |_| {});
    let s = session(&broker, "ana.silva@example.com");
    let end = provider.sign_in(login_url(&s), &ana());
    assert_eq!(end.page_kinds(), ["login", "consent"]);
    assert_eq!(end.status, Some(200), "{}", end.text);
    assert!(end.text.contains("Corp SSO connected"), "{}", end.text);
    assert!(end.url.starts_with(&broker.public), "{}", end.url);
    let tokens = broker.token(&s);
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    let t = tokens.json();
    assert_eq!(t["provider"], "corp");
    assert_eq!(t["subject"], "ana");
    assert_eq!(t["email"], "ana.silva@example.com");
    assert_eq!(t["email_verified"], true);
    // offline_access was asked for: a refresh token is required, and came.
    assert!(
        t["refresh_token"].as_str().is_some_and(|r| !r.is_empty()),
        "{t}"
    );
    assert!(!end.html.contains(t["access_token"].as_str().unwrap()));
    assert_eq!(broker.token(&s).status, 410);
    // Discovery once at start-up, the JWKS once for the id_token.
    assert_eq!(provider.requests("discovery"), 1);
    assert_eq!(provider.jwks_fetches(), 1);
}

#[test]
fn an_email_kept_at_the_userinfo_endpoint_is_read_there() {
    let (provider, broker) = setup(Planned::new(), |c| c.id_token_claims = false);
    let s = session(&broker, "ana.silva@example.com");
    let end = provider.sign_in(login_url(&s), &ana());
    assert!(end.text.contains("Corp SSO connected"), "{}", end.text);
    assert_eq!(provider.requests("userinfo"), 1);
    assert_eq!(broker.token(&s).json()["email_verified"], true);
}

#[test]
fn an_unverified_email_and_another_account_fail_closed() {
    let (provider, broker) = setup(Planned::new(), |c| {
        c.accounts = vec![ana().unverified(), OidcConfig::bob()]
    });
    let s = session(&broker, "ana.silva@example.com");
    let end = provider.sign_in(login_url(&s), &ana().unverified());
    assert_eq!(end.status, Some(403));
    assert!(end.text.contains("not verified"), "{}", end.text);
    assert_eq!(broker.status(&s)["reason"], "email_unverified");

    let s = session(&broker, "ana.silva@example.com");
    let end = provider.sign_in(login_url(&s), &OidcConfig::bob());
    assert_eq!(end.status, Some(403));
    assert!(
        end.text.contains("different Corp SSO account"),
        "{}",
        end.text
    );
    assert_eq!(broker.status(&s)["reason"], "email_mismatch");
    assert_eq!(broker.token(&s).status, 409);
}

#[test]
fn a_refused_consent_is_a_cancelled_sign_in_in_the_persons_language() {
    let (provider, broker) = setup(Planned::new(), |_| {});
    let s = session(&broker, "ana.silva@example.com");
    let end = provider
        .browser(login_url(&s))
        .account(&ana())
        .refuse_consent()
        .locale("pt-BR")
        .run();
    assert_eq!(end.status, Some(200));
    assert!(
        end.text.contains("Você cancelou o login da conta Corp SSO"),
        "{}",
        end.text
    );
    assert_eq!(broker.status(&s)["reason"], "access_denied");
}

#[test]
fn signing_keys_rotated_at_the_provider_are_picked_up() {
    let (provider, broker) = setup(Planned::new(), |_| {});
    let s = session(&broker, "ana.silva@example.com");
    let end = provider.sign_in(login_url(&s), &ana());
    assert!(end.text.contains("Corp SSO connected"), "{}", end.text);
    let first = provider.signing_kid();
    // Past the broker's one-second floor between JWKS fetches (src/provider/oidc.rs).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let rotated = provider.rotate_keys();
    provider.drop_old_keys();
    assert_ne!(first, rotated);
    let s = session(&broker, "ana.silva@example.com");
    let end = provider.sign_in(login_url(&s), &ana());
    assert!(end.text.contains("Corp SSO connected"), "{}", end.text);
    assert_eq!(provider.jwks_fetches(), 2);
}

/// RFC 9207: this provider promises `iss` in its responses, so one without it, or naming
/// another issuer, is refused before its code is used. The broker's public URL is a catcher
/// here, so the test holds the real redirect and delivers it altered.
#[test]
fn the_iss_parameter_is_required_and_must_be_the_providers() {
    let catcher = Catcher::start();
    let (provider, broker) = setup(catcher.plan(), |_| {});
    let caught = |s: &Value| {
        let end = provider.sign_in(&broker.open(s), &ana());
        assert!(end.text.contains("Caught the redirect"), "{}", end.text);
        let url = catcher
            .caught()
            .into_iter()
            .rev()
            .find(|u| u.contains("/login/corp/callback"))
            .unwrap();
        assert_eq!(
            oidc::query_param(&url, "iss").as_deref(),
            Some(provider.issuer()),
            "{url}"
        );
        url
    };
    for altered in [None, Some("https://attacker.example")] {
        let s = session(&broker, "ana.silva@example.com");
        let url = with_param(&caught(&s), "iss", altered);
        let page = broker.arrive(&url);
        broker.assert_failed(&s, &page, "issuer_mismatch", 502, "could not connect");
        assert_eq!(provider.requests("token"), 0, "a code was redeemed");
    }
    // Untouched, the same path succeeds.
    let s = session(&broker, "ana.silva@example.com");
    let page = broker.arrive(&caught(&s));
    broker.assert_connected(&s, &page, "Corp SSO connected");
}
