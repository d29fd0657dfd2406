//! Several identity providers in one broker (issue 8): GitHub and Google side by side, each
//! session going to its own provider and back through its own callback; a response brought to
//! another provider's callback (a mix-up) refused before any code is used; `login-link
//! --provider`; and settings that must stop start-up.

use crate::support;

use support::fake_github;
use support::fake_google;

use fake_github::{FakeGitHub, FakeGitHubConfig};
use fake_google::{FakeGoogle, FakeGoogleConfig};
use serde_json::json;
use support::broker::{providers_env, start_up_fails, Broker, Planned, BROKER_TOKEN};
use support::get_url;

struct Setup {
    github: FakeGitHub,
    google: FakeGoogle,
    broker: Broker,
}

fn setup() -> Setup {
    let planned = Planned::new();
    let github = FakeGitHub::start_with(FakeGitHubConfig {
        redirect_uri: planned.callback("github"),
        ..FakeGitHubConfig::default()
    });
    let google = FakeGoogle::start_with(FakeGoogleConfig {
        redirect_uris: vec![planned.callback("google")],
        ..FakeGoogleConfig::default()
    });
    let env = providers_env(&[
        ("github", github.provider_settings()),
        ("google", google.provider_settings()),
    ]);
    let broker = planned.start(&env);
    Setup {
        github,
        google,
        broker,
    }
}

fn browse(authorize: &str) -> String {
    let res = get_url(authorize);
    assert_eq!(res.status, 302, "the fake refused: {}", res.text());
    res.header("Location").unwrap().to_string()
}

#[test]
fn github_and_google_sign_in_side_by_side() {
    let s = setup();
    let listening = s.broker.relay.wait_for_log("\"listening\"");
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let providers = v["broker"]["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 2, "{listening}");
    assert!(!listening.contains(&s.github.config().client_secret));
    let gh = s.broker.session(
        "github",
        json!({ "expected_email": "ana.silva@example.com" }),
    );
    let go = s
        .broker
        .session("google", json!({ "expected_email": "ana.silva@gmail.com" }));
    assert_eq!(s.broker.status(&gh)["provider"], "github");
    assert!(s.broker.open(&gh).starts_with(&s.github.authorize_url()));
    assert!(s.broker.open(&go).starts_with(&s.google.authorize_url()));
    let page = s.broker.sign_in(&go, browse);
    let t = s.broker.assert_connected(&go, &page, "Google connected");
    assert_eq!(t["provider"], "google");
    let page = s.broker.sign_in(&gh, browse);
    let t = s.broker.assert_connected(&gh, &page, "GitHub connected");
    assert_eq!(t["provider"], "github");
}

#[test]
fn a_response_brought_to_another_providers_callback_is_refused() {
    let s = setup();
    let go = s
        .broker
        .session("google", json!({ "expected_email": "ana.silva@gmail.com" }));
    let redirect = browse(&s.broker.open(&go));
    let mixed = redirect.replace("/login/google/callback", "/login/github/callback");
    let page = s.broker.arrive(&mixed);
    s.broker
        .assert_failed(&go, &page, "issuer_mismatch", 502, "could not connect");
    assert_eq!(
        (s.google.token_calls(), s.github.token_calls()),
        (0, 0),
        "a mixed-up code went to a token endpoint"
    );
    // The state is used up: delivering the same response to the right callback changes
    // nothing.
    let again = s.broker.arrive(&redirect);
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(s.google.token_calls(), 0);
}

#[test]
fn the_login_link_command_takes_a_provider() {
    use std::io::{BufRead, BufReader};
    let s = setup();
    let mut child = std::process::Command::new(support::BIN)
        .args([
            "login-link",
            "ana.silva@example.com",
            "--provider",
            "github",
            "--wait",
            "--timeout-secs",
            "60",
        ])
        .env("WK_CALLBACK_SERVER", s.broker.relay.url(""))
        .env("OAUTH_RELAY_BROKER_TOKEN", BROKER_TOKEN)
        .env_remove("WK_M365_BROKER_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let login_url = lines.next().unwrap().unwrap();
    let login_url = login_url.strip_prefix("login_url: ").unwrap().to_string();
    assert!(
        login_url.starts_with(&format!("{}/login/", s.broker.public)),
        "{login_url}"
    );
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "expected_email: ana.silva@example.com"
    );
    assert!(lines.next().unwrap().unwrap().starts_with("expires_at: "));
    let page = s.broker.sign_in(&json!({ "login_url": login_url }), browse);
    assert_eq!(page.status, 200);
    let tokens: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(tokens["provider"], "github");
    assert!(tokens["access_token"].is_string() && tokens["refresh_token"].is_null());
    assert!(child.wait().unwrap().success());
}

#[test]
fn misconfigured_providers_stop_start_up_naming_the_variable() {
    let broker = [
        ("OAUTH_RELAY_PUBLIC_URL", "https://relay.example"),
        ("OAUTH_RELAY_BROKER_TOKEN", BROKER_TOKEN),
        ("OAUTH_RELAY_PROVIDERS", "corp"),
    ];
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "OAUTH_RELAY_PROVIDER_CORP_KIND"),
        (
            &[("OAUTH_RELAY_PROVIDER_CORP_KIND", "saml")],
            "OAUTH_RELAY_PROVIDER_CORP_KIND",
        ),
        (
            &[("OAUTH_RELAY_PROVIDER_CORP_KIND", "oidc")],
            "OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID",
        ),
        (
            &[
                ("OAUTH_RELAY_PROVIDER_CORP_KIND", "oidc"),
                ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID", "c"),
            ],
            "OAUTH_RELAY_PROVIDER_CORP_ISSUER",
        ),
        (
            &[
                ("OAUTH_RELAY_PROVIDER_CORP_KIND", "oidc"),
                ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID", "c"),
                ("OAUTH_RELAY_PROVIDER_CORP_ISSUER", "http://idp.example"),
            ],
            "OAUTH_RELAY_PROVIDER_CORP_ISSUER",
        ),
        (
            &[
                ("OAUTH_RELAY_PROVIDER_CORP_KIND", "github"),
                ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID", "c"),
                ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_SECRET", "s"),
                ("OAUTH_RELAY_PROVIDER_CORP_HOSTED_DOMAIN", "example.com"),
            ],
            "OAUTH_RELAY_PROVIDER_CORP_HOSTED_DOMAIN",
        ),
        (
            &[
                ("OAUTH_RELAY_PROVIDER_CORP_KIND", "github"),
                ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID", "c"),
                ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_SECRET", "s"),
                ("OAUTH_RELAY_PROVIDER_CROP_CLIENT_ID", "typo"),
            ],
            "OAUTH_RELAY_PROVIDER_CROP_CLIENT_ID",
        ),
        (
            // Nothing answers discovery there.
            &[
                ("OAUTH_RELAY_PROVIDER_CORP_KIND", "oidc"),
                ("OAUTH_RELAY_PROVIDER_CORP_CLIENT_ID", "c"),
                ("OAUTH_RELAY_PROVIDER_CORP_ISSUER", "http://127.0.0.1:1"),
            ],
            "OAUTH_RELAY_PROVIDER_CORP_ISSUER",
        ),
    ];
    for (vars, named) in cases {
        let env: Vec<(String, String)> = broker
            .iter()
            .chain(vars.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let stderr = start_up_fails(&env);
        assert!(stderr.contains(named), "{vars:?}: {stderr}");
    }
}
