//! The OpenID Provider harness (tests/support/oidc.rs) end to end, without the broker: a real
//! node-oidc-provider, a real headless Chromium through its login and consent pages, a tiny
//! redirect catcher standing in for the client's redirect URI, and the token endpoint redeemed
//! with the crate's own outbound agent. Proves what the broker tests build on: codes with
//! `state` and RFC 9207 `iss`, PKCE S256, id_tokens whose `kid` is in the JWKS and carry the
//! `nonce`, refresh tokens (rotated with reuse detection when asked), key rotation, a refused
//! consent, a wrong password, another account.

use crate::support;

use support::oidc;

use base64::Engine as _;
use oidc::{query_param, OidcConfig, OidcProvider, OnConsent, OnLogin};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CAUGHT: &str = "Caught the redirect";

/// A client's redirect URI on 127.0.0.1: records every `/callback` request target and answers
/// a small page; `/login` answers 302 to the authorization URL set with `set_login_target`
/// (as the broker's login link does).
struct Catcher {
    port: u16,
    callbacks: Arc<Mutex<Vec<String>>>,
    login_target: Arc<Mutex<String>>,
}

impl Catcher {
    fn start() -> Catcher {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let callbacks = Arc::new(Mutex::new(Vec::new()));
        let login_target = Arc::new(Mutex::new(String::new()));
        let (seen, target) = (callbacks.clone(), login_target.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let reply = if path.starts_with("/callback") {
                    seen.lock().unwrap().push(path);
                    let body =
                        format!("<!DOCTYPE html><html><body><h1>{CAUGHT}</h1></body></html>");
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else if path == "/login" {
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        target.lock().unwrap()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .into()
                };
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Catcher {
            port,
            callbacks,
            login_target,
        }
    }

    fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}/callback", self.port)
    }

    /// A login link that redirects to `authorization_url`.
    fn login_link(&self, authorization_url: &str) -> String {
        *self.login_target.lock().unwrap() = authorization_url.to_string();
        format!("http://127.0.0.1:{}/login", self.port)
    }

    fn callbacks(&self) -> Vec<String> {
        self.callbacks.lock().unwrap().clone()
    }
}

/// One authorization request's secrets.
struct Request {
    state: String,
    nonce: String,
    verifier: String,
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    b64url(&bytes)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Request {
    fn new() -> Request {
        Request {
            state: random(),
            nonce: random(),
            verifier: random(),
        }
    }

    fn challenge(&self) -> String {
        b64url(ring::digest::digest(&ring::digest::SHA256, self.verifier.as_bytes()).as_ref())
    }

    /// The authorization URL: code flow, PKCE S256, state, nonce, `openid email offline_access`.
    fn url(&self, op: &OidcProvider, redirect_uri: &str) -> String {
        let e = oidc::percent_encode;
        format!(
            "{}?client_id={}&response_type=code&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            op.authorization_endpoint(),
            e(&op.config().client_id),
            e(redirect_uri),
            e("openid email offline_access"),
            e(&self.state),
            e(&self.nonce),
            e(&self.challenge()),
        )
    }
}

fn agent() -> ureq::Agent {
    oauth_relay::outbound::agent(Duration::from_secs(60))
}

fn read(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("request");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")),
    )
}

fn get_json(url: &str) -> Value {
    let (status, body) = read(agent().get(url).call());
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

fn basic_auth(op: &OidcProvider) -> String {
    let c = op.config();
    let pair = format!("{}:{}", c.client_id, c.client_secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Redeems a code at the token endpoint with client_secret_basic.
fn redeem(op: &OidcProvider, code: &str, req: &Request, redirect_uri: &str) -> (u16, Value) {
    read(
        agent()
            .post(&op.token_endpoint())
            .header("Authorization", &basic_auth(op))
            .send_form([
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", &req.verifier),
            ]),
    )
}

/// The header and payload of a JWT (no signature check: that is the broker's job).
fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next().unwrap())
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    (part(), part())
}

fn jwks_kids(op: &OidcProvider) -> Vec<String> {
    get_json(&op.jwks_uri())["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["kty"], "RSA");
            assert_eq!(k["alg"], "RS256");
            assert_eq!(k["use"], "sig");
            assert!(k.get("d").is_none(), "a private key is published: {k}");
            k["kid"].as_str().unwrap().to_string()
        })
        .collect()
}

/// A provider whose only redirect URI is the catcher's.
fn setup() -> (Catcher, OidcProvider) {
    let catcher = Catcher::start();
    let op = OidcProvider::start(OidcConfig::with_redirect_uris(&[&catcher.redirect_uri()]));
    (catcher, op)
}

/// Signs `account` in through a login link and returns the code from the one callback.
fn sign_in_code(
    catcher: &Catcher,
    op: &OidcProvider,
    req: &Request,
    account: &oidc::OidcAccount,
) -> String {
    let before = catcher.callbacks().len();
    let link = catcher.login_link(&req.url(op, &catcher.redirect_uri()));
    let page = op.sign_in(&link, account);
    assert_eq!(page.outcome, "left_provider", "{page:?}");
    assert_eq!(page.page_kinds(), ["login", "consent"]);
    assert!(
        page.url.starts_with(&catcher.redirect_uri()),
        "{}",
        page.url
    );
    assert!(page.text.contains(CAUGHT), "{}", page.text);
    let callbacks = catcher.callbacks();
    assert_eq!(callbacks.len(), before + 1, "{callbacks:?}");
    let callback = callbacks.last().unwrap();
    assert_eq!(query_param(callback, "state").unwrap(), req.state);
    assert_eq!(query_param(callback, "iss").unwrap(), op.issuer());
    assert_eq!(query_param(callback, "error"), None, "{callback}");
    query_param(callback, "code").expect("a code")
}

#[test]
fn discovery_lists_the_endpoints_pkce_s256_and_the_iss_parameter() {
    let (_catcher, op) = setup();
    assert!(op.issuer().starts_with("http://127.0.0.1:"));
    let d = get_json(&op.discovery_url());
    assert_eq!(d["issuer"], op.issuer());
    assert_eq!(d["authorization_endpoint"], op.authorization_endpoint());
    assert_eq!(d["token_endpoint"], op.token_endpoint());
    assert_eq!(d["jwks_uri"], op.jwks_uri());
    assert_eq!(d["userinfo_endpoint"], op.userinfo_endpoint());
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    for scope in ["openid", "email", "offline_access"] {
        assert!(
            d["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&scope.into()),
            "{scope}: {d}"
        );
    }
    for method in ["client_secret_basic", "client_secret_post"] {
        assert!(d["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&method.into()));
    }
    assert_eq!(jwks_kids(&op), [op.signing_kid()]);
    assert_eq!(op.jwks_fetches(), 1);
    assert_eq!(op.requests("discovery"), 1);
}

#[test]
fn a_person_signs_in_and_the_code_redeems_once_for_an_id_token_and_a_refresh_token() {
    let (catcher, op) = setup();
    let req = Request::new();
    let code = sign_in_code(&catcher, &op, &req, &OidcConfig::ana());
    assert_eq!(op.logins(), ["ana"]);

    let (status, tokens) = redeem(&op, &code, &req, &catcher.redirect_uri());
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["access_token"].is_string());
    assert_eq!(tokens["scope"], "openid email offline_access");
    let refresh_token = tokens["refresh_token"].as_str().expect("a refresh token");
    let (header, claims) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(header["alg"], "RS256");
    let kid = header["kid"].as_str().unwrap();
    assert!(jwks_kids(&op).contains(&kid.to_string()), "{kid}");
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], op.config().client_id);
    assert_eq!(claims["nonce"], req.nonce);
    assert_eq!(claims["sub"], "ana");
    assert_eq!(claims["email"], "ana.silva@example.com");
    assert_eq!(claims["email_verified"], true);

    // The refresh token works, with client_secret_post this time.
    let refresh = || {
        let c = op.config();
        read(agent().post(&op.token_endpoint()).send_form([
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", &c.client_id),
            ("client_secret", &c.client_secret),
        ]))
    };
    let (status, refreshed) = refresh();
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed["access_token"].is_string());
    assert_ne!(refreshed["access_token"], tokens["access_token"]);

    // Once: the same code again is refused, and (RFC 6749 4.1.2) the grant it made is revoked.
    let (status, again) = redeem(&op, &code, &req, &catcher.redirect_uri());
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, revoked) = refresh();
    assert_eq!(
        (status, revoked["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(op.requests("token"), 4);
}

/// `grant_type=refresh_token` with client_secret_post.
fn refresh(op: &OidcProvider, refresh_token: &str) -> (u16, Value) {
    let c = op.config();
    read(agent().post(&op.token_endpoint()).send_form([
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", &c.client_id),
        ("client_secret", &c.client_secret),
    ]))
}

#[test]
fn with_rotation_a_refresh_rotates_and_a_reused_token_revokes_the_grant() {
    let catcher = Catcher::start();
    let op = OidcProvider::start(OidcConfig {
        rotate_refresh_tokens: true,
        ..OidcConfig::with_redirect_uris(&[&catcher.redirect_uri()])
    });
    let req = Request::new();
    let code = sign_in_code(&catcher, &op, &req, &OidcConfig::ana());
    let (status, tokens) = redeem(&op, &code, &req, &catcher.redirect_uri());
    assert_eq!(status, 200, "{tokens}");
    let first = tokens["refresh_token"].as_str().unwrap().to_string();

    // A refresh returns a new refresh token.
    let (status, rotated) = refresh(&op, &first);
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!((op.refresh_grants(), op.grants_revoked()), (1, 0));

    // The used one again: refused, and the grant is gone, so the new one is refused as well.
    let (status, reused) = refresh(&op, &first);
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(op.grants_revoked(), 1);
    let (status, after) = refresh(&op, &second);
    assert_eq!(
        (status, after["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!((op.refresh_grants(), op.refresh_grant_errors()), (1, 2));
    assert_eq!(op.max_refresh_presentations(), 2);
    assert!(
        op.logs()
            .iter()
            .any(|l| l.contains("refresh token already used")),
        "{:?}",
        op.logs()
    );
}

#[test]
fn without_rotation_the_same_refresh_token_keeps_working() {
    let (catcher, op) = setup();
    let req = Request::new();
    let code = sign_in_code(&catcher, &op, &req, &OidcConfig::ana());
    let (_, tokens) = redeem(&op, &code, &req, &catcher.redirect_uri());
    let token = tokens["refresh_token"].as_str().unwrap();
    for _ in 0..2 {
        let (status, refreshed) = refresh(&op, token);
        assert_eq!(status, 200, "{refreshed}");
        assert_eq!(refreshed["refresh_token"], token);
    }
    assert_eq!(
        (op.refresh_grants(), op.max_refresh_presentations()),
        (2, 2)
    );
}

#[test]
fn a_key_rotation_between_two_sign_ins_changes_the_kid_and_keeps_the_old_key_published() {
    let (catcher, op) = setup();
    let first_kid = op.signing_kid();
    let req = Request::new();
    let code = sign_in_code(&catcher, &op, &req, &OidcConfig::ana());
    let (status, tokens) = redeem(&op, &code, &req, &catcher.redirect_uri());
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(
        jwt_parts(tokens["id_token"].as_str().unwrap()).0["kid"],
        first_kid
    );

    let new_kid = op.rotate_keys();
    assert_ne!(new_kid, first_kid);
    assert_eq!(op.kids(), [new_kid.clone(), first_kid.clone()]);
    let fetches = op.jwks_fetches();
    assert_eq!(jwks_kids(&op), [new_kid.clone(), first_kid.clone()]);
    assert_eq!(op.jwks_fetches(), fetches + 1);

    // The old refresh token still works after the swap (the store is shared).
    let (status, _) = read(agent().post(&op.token_endpoint()).send_form([
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ("client_id", &op.config().client_id),
        ("client_secret", &op.config().client_secret),
    ]));
    assert_eq!(status, 200);

    let req = Request::new();
    let code = sign_in_code(&catcher, &op, &req, &OidcConfig::ana());
    let (status, tokens) = redeem(&op, &code, &req, &catcher.redirect_uri());
    assert_eq!(status, 200, "{tokens}");
    let (header, claims) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(header["kid"], new_kid);
    assert_eq!(claims["nonce"], req.nonce);

    op.drop_old_keys();
    assert_eq!(jwks_kids(&op), [new_kid]);
}

#[test]
fn a_refused_consent_redirects_back_with_access_denied() {
    let (catcher, op) = setup();
    let req = Request::new();
    let link = catcher.login_link(&req.url(&op, &catcher.redirect_uri()));
    let page = op
        .browser(&link)
        .account(&OidcConfig::ana())
        .refuse_consent()
        .run();
    assert_eq!(page.outcome, "left_provider", "{page:?}");
    assert_eq!(page.page_kinds(), ["login", "consent"]);
    assert_eq!(page.param("error").as_deref(), Some("access_denied"));
    let callbacks = catcher.callbacks();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!(
        query_param(&callbacks[0], "error").unwrap(),
        "access_denied"
    );
    assert_eq!(query_param(&callbacks[0], "state").unwrap(), req.state);
    assert_eq!(query_param(&callbacks[0], "iss").unwrap(), op.issuer());
    assert_eq!(query_param(&callbacks[0], "code"), None);

    // Cancelling on the login page does the same, before anyone signed in.
    let req = Request::new();
    let link = catcher.login_link(&req.url(&op, &catcher.redirect_uri()));
    let page = op.browser(&link).on_login(OnLogin::Cancel).run();
    assert_eq!(page.page_kinds(), ["login"]);
    assert_eq!(page.param("error").as_deref(), Some("access_denied"));
    assert_eq!(page.param("state").unwrap(), req.state);
    assert_eq!(op.logins(), ["ana"]);
}

#[test]
fn a_wrong_password_keeps_the_person_on_the_login_page() {
    let (catcher, op) = setup();
    let req = Request::new();
    let link = catcher.login_link(&req.url(&op, &catcher.redirect_uri()));
    let page = op.browser(&link).login("ana", "not-her-password").run();
    assert_eq!(page.outcome, "login_failed", "{page:?}");
    assert_eq!(page.page_kinds(), ["login", "login"]);
    assert!(!page.pages[0].login_error && page.pages[1].login_error);
    assert!(
        page.text.contains("Invalid login or password."),
        "{}",
        page.text
    );
    assert!(
        page.url.starts_with(&op.url("/interaction/")),
        "{}",
        page.url
    );
    // An account that does not exist is the same.
    let page = op.browser(&link).login("mallory", "anything").run();
    assert_eq!(page.outcome, "login_failed", "{page:?}");
    assert!(catcher.callbacks().is_empty());
    assert_eq!(op.failed_logins(), ["ana", "mallory"]);
    assert!(op.logins().is_empty());
    assert_eq!(op.requests("token"), 0);
}

#[test]
fn another_account_signs_in_as_itself_by_email_with_its_own_claims() {
    let catcher = Catcher::start();
    let bob = OidcConfig::bob().unverified();
    let op = OidcProvider::start(OidcConfig {
        accounts: vec![OidcConfig::ana(), bob.clone()],
        ..OidcConfig::with_redirect_uris(&[&catcher.redirect_uri()])
    });
    let req = Request::new();
    let link = catcher.login_link(&req.url(&op, &catcher.redirect_uri()));
    let page = op.browser(&link).login(&bob.email, &bob.password).run();
    assert_eq!(page.outcome, "left_provider", "{page:?}");
    let code = page.param("code").unwrap();
    let (status, tokens) = redeem(&op, &code, &req, &catcher.redirect_uri());
    assert_eq!(status, 200, "{tokens}");
    let claims = jwt_parts(tokens["id_token"].as_str().unwrap()).1;
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["email"], "bob.jones@example.com");
    assert_eq!(claims["email_verified"], false);
    assert_eq!(op.logins(), ["bob"]);
}

#[test]
fn stopping_on_the_consent_page_shows_what_is_asked() {
    let (catcher, op) = setup();
    let req = Request::new();
    let page = op
        .browser(&req.url(&op, &catcher.redirect_uri()))
        .account(&OidcConfig::ana())
        .on_consent(OnConsent::Stop)
        .run();
    assert_eq!(page.outcome, "stopped");
    assert_eq!(page.page_kinds(), ["login", "consent"]);
    assert!(page.text.contains("Authorize"), "{}", page.text);
    assert!(page.text.contains("email"), "{}", page.text);
    assert!(page.text.contains("offline access"), "{}", page.text);
    assert!(catcher.callbacks().is_empty());
}

#[test]
fn pkce_s256_is_required() {
    let (catcher, op) = setup();
    let req = Request::new();
    let full = req.url(&op, &catcher.redirect_uri());
    let without = full.split("&code_challenge=").next().unwrap().to_string();
    let plain = full.replace("code_challenge_method=S256", "code_challenge_method=plain");
    for url in [without, plain] {
        let response = agent().get(&url).call().unwrap();
        assert_eq!(response.status().as_u16(), 303, "{url}");
        let location = response.headers()["location"].to_str().unwrap();
        assert!(location.starts_with(&catcher.redirect_uri()), "{location}");
        assert_eq!(
            query_param(location, "error").as_deref(),
            Some("invalid_request")
        );
        assert_eq!(query_param(location, "iss").unwrap(), op.issuer());
    }
}
