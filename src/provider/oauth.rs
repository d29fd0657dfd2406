//! The one OAuth 2.0 authorization-code redemption every provider uses (RFC 6749 4.1.3, with the
//! PKCE verifier of RFC 7636 4.5): a form POST of `grant_type=authorization_code`, `code`,
//! `redirect_uri`, `client_id` and `code_verifier`, the client authenticated as the provider
//! wants ([`ClientAuth`]), `Accept: application/json`. It fails closed: anything but a 200 JSON
//! object with a non-empty `access_token` and no `error` is a failure (GitHub answers errors with
//! HTTP 200). Redirects are never followed and the whole call has one time budget
//! (`outbound::agent`).

use super::Grant;
use crate::error::{Reason, SignInFailure};
use crate::secret::Secret;
use base64::Engine;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// The most of a token response we read; real ones are a few KiB.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024;

/// How the client proves who it is at the token endpoint (RFC 6749 2.3.1).
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// A public client: PKCE alone, `client_id` in the form.
    None,
    /// `client_secret` in the form body (`client_secret_post`).
    SecretPost(Secret),
    /// HTTP Basic with the form-encoded id and secret (`client_secret_basic`).
    SecretBasic(Secret),
}

impl ClientAuth {
    /// Whether a secret is sent at all (a confidential client).
    pub fn is_confidential(&self) -> bool {
        !matches!(self, ClientAuth::None)
    }

    /// The OpenID Connect name of the method, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::SecretBasic(_) => "client_secret_basic",
        }
    }
}

/// One code redemption.
pub struct Redemption<'a> {
    pub token_url: &'a str,
    pub client_id: &'a str,
    pub auth: &'a ClientAuth,
    pub redirect_uri: &'a str,
    pub code: &'a Secret,
    pub verifier: &'a Secret,
    /// Form fields a provider adds (Microsoft: `scope`).
    pub extra: &'a [(&'a str, &'a str)],
}

/// Redeems the code within `budget`. `hint` turns a provider's error description into what the
/// operator should fix (for the audit log).
pub fn redeem(
    r: &Redemption,
    budget: Duration,
    hint: &dyn Fn(&str) -> Option<String>,
) -> Result<Grant, SignInFailure> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", r.code.expose()),
        ("redirect_uri", r.redirect_uri),
        ("client_id", r.client_id),
        ("code_verifier", r.verifier.expose()),
    ];
    form.extend_from_slice(r.extra);
    let basic;
    let mut request = crate::outbound::agent(budget)
        .post(r.token_url)
        .header("Accept", "application/json");
    match r.auth {
        ClientAuth::None => {}
        ClientAuth::SecretPost(secret) => form.push(("client_secret", secret.expose())),
        ClientAuth::SecretBasic(secret) => {
            basic = basic_authorization(r.client_id, secret);
            request = request.header("Authorization", basic.expose());
        }
    }
    let sent = SystemTime::now();
    let failed = |detail: String| SignInFailure::new(Reason::ExchangeFailed, detail);
    let mut response = request.send_form(form).map_err(|e| {
        failed(format!("POST {}: {e}", r.token_url)).with_hint(Some(
            "the token endpoint did not answer in time or at all: check its URL and the egress",
        ))
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_string()
        .map_err(|e| failed(format!("reading the token response: {e}")))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if let Some(error) = body["error"].as_str().filter(|e| !e.is_empty()) {
        let description = body["error_description"].as_str().unwrap_or("");
        return Err(failed(format!(
            "HTTP {status} {error}: {}",
            description.lines().next().unwrap_or("")
        ))
        .with_hint(hint(description).or_else(|| hint(error))));
    }
    if status != 200 {
        return Err(failed(format!("the token endpoint answered HTTP {status}")));
    }
    if !body.is_object() {
        return Err(failed(
            "the token endpoint answered 200 without a JSON object".into(),
        ));
    }
    let token = |name: &str| {
        body[name]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(Secret::new)
    };
    let access_token = token("access_token")
        .ok_or_else(|| failed("the token response has no access_token".into()))?;
    // Some servers send `expires_in` as a string; none means the token does not expire
    // (GitHub's OAuth apps).
    let expires_in = match &body["expires_in"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    Ok(Grant {
        access_token,
        refresh_token: token("refresh_token"),
        id_token: token("id_token"),
        token_type: body["token_type"].as_str().unwrap_or("Bearer").to_string(),
        scope: body["scope"].as_str().unwrap_or_default().to_string(),
        expiry: expires_in.map(|s| sent + Duration::from_secs(s)),
    })
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`: RFC 6749 2.3.1 form-encodes both first.
fn basic_authorization(client_id: &str, secret: &Secret) -> Secret {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret.expose()));
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A one-shot HTTP server on loopback: answers the first request with `response` (raw bytes
    /// after the status line's "HTTP/1.1 ") and hands the raw request back.
    pub(crate) fn serve_once(status_and_rest: &str) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let reply = format!("HTTP/1.1 {status_and_rest}");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then the body by Content-Length.
            loop {
                let n = stream.read(&mut buf).unwrap();
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if raw.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
            }
            stream.write_all(reply.as_bytes()).unwrap();
            let _ = tx.send(String::from_utf8_lossy(&raw).to_string());
        });
        (url, rx)
    }

    pub(crate) fn json_reply(status: &str, body: &str) -> String {
        format!(
            "{status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn redeem_at(url: &str, auth: &ClientAuth) -> Result<Grant, SignInFailure> {
        let (code, verifier) = (Secret::new("the-code"), Secret::new("the-verifier"));
        redeem(
            &Redemption {
                token_url: &format!("{url}/token"),
                client_id: "client id",
                auth,
                redirect_uri: "https://relay.example/login/x/callback",
                code: &code,
                verifier: &verifier,
                extra: &[("scope", "openid email")],
            },
            Duration::from_secs(10),
            &|d| {
                d.contains("bad_verification_code")
                    .then(|| "get a new code".into())
            },
        )
    }

    fn form_of(request: &str) -> Vec<(String, String)> {
        let body = request.split_once("\r\n\r\n").unwrap().1;
        form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
        request.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    #[test]
    fn a_code_is_redeemed_with_the_verifier_and_the_secret_in_the_form() {
        let (url, seen) = serve_once(&json_reply(
            "200 OK",
            r#"{"access_token":"at","refresh_token":"rt","id_token":"it","token_type":"Bearer","scope":"openid","expires_in":"120"}"#,
        ));
        let grant = redeem_at(&url, &ClientAuth::SecretPost(Secret::new("s3cret"))).unwrap();
        assert_eq!(grant.access_token.expose(), "at");
        assert_eq!(grant.refresh_token.unwrap().expose(), "rt");
        assert_eq!(grant.id_token.unwrap().expose(), "it");
        assert!(grant.expiry.is_some());
        let request = seen.recv().unwrap();
        assert!(request.starts_with("POST /token HTTP/1.1"));
        assert_eq!(header(&request, "accept"), Some("application/json"));
        assert!(header(&request, "authorization").is_none());
        let form = form_of(&request);
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("grant_type"), Some("authorization_code"));
        assert_eq!(get("code"), Some("the-code"));
        assert_eq!(get("code_verifier"), Some("the-verifier"));
        assert_eq!(get("client_id"), Some("client id"));
        assert_eq!(get("client_secret"), Some("s3cret"));
        assert_eq!(get("scope"), Some("openid email"));
        assert_eq!(
            get("redirect_uri"),
            Some("https://relay.example/login/x/callback")
        );
    }

    #[test]
    fn basic_authentication_form_encodes_id_and_secret() {
        let (url, seen) = serve_once(&json_reply("200 OK", r#"{"access_token":"at"}"#));
        let grant = redeem_at(&url, &ClientAuth::SecretBasic(Secret::new("a:b+c"))).unwrap();
        assert_eq!(grant.token_type, "Bearer");
        assert!(grant.expiry.is_none(), "no expires_in: does not expire");
        let request = seen.recv().unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("client+id:a%3Ab%2Bc");
        assert_eq!(
            header(&request, "authorization"),
            Some(format!("Basic {expected}").as_str())
        );
        assert!(!form_of(&request).iter().any(|(k, _)| k == "client_secret"));
    }

    #[test]
    fn a_public_client_sends_no_secret() {
        let (url, seen) = serve_once(&json_reply("200 OK", r#"{"access_token":"at"}"#));
        redeem_at(&url, &ClientAuth::None).unwrap();
        let request = seen.recv().unwrap();
        assert!(header(&request, "authorization").is_none());
        assert!(!form_of(&request).iter().any(|(k, _)| k == "client_secret"));
    }

    #[test]
    fn an_error_with_http_200_fails() {
        // GitHub's way: HTTP 200 and an error object.
        let (url, _seen) = serve_once(&json_reply(
            "200 OK",
            r#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired.","error_uri":"https://docs.github.com/"}"#,
        ));
        let f = redeem_at(&url, &ClientAuth::None).unwrap_err();
        assert_eq!(f.reason, Reason::ExchangeFailed);
        assert!(f.detail.contains("bad_verification_code"), "{}", f.detail);
        assert_eq!(f.hint.as_deref(), Some("get a new code"));
    }

    #[test]
    fn error_statuses_fail_with_the_provider_words_in_the_detail_only() {
        let (url, _seen) = serve_once(&json_reply(
            "400 Bad Request",
            r#"{"error":"invalid_grant","error_description":"Bad Request\nmore"}"#,
        ));
        let f = redeem_at(&url, &ClientAuth::None).unwrap_err();
        assert_eq!(f.detail, "HTTP 400 invalid_grant: Bad Request");
        let (url, _seen) = serve_once("503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        let f = redeem_at(&url, &ClientAuth::None).unwrap_err();
        assert_eq!(f.detail, "the token endpoint answered HTTP 503");
    }

    #[test]
    fn non_json_or_no_access_token_fails_closed() {
        for reply in [
            "200 OK\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 42\r\n\r\naccess_token=gho_x&scope=&token_type=bearer".to_string(),
            json_reply("200 OK", r#"{"token_type":"Bearer"}"#),
            json_reply("200 OK", r#"{"access_token":""}"#),
            json_reply("200 OK", r#"["access_token"]"#),
        ] {
            let (url, _seen) = serve_once(&reply);
            let f = redeem_at(&url, &ClientAuth::None).unwrap_err();
            assert_eq!(f.reason, Reason::ExchangeFailed, "{reply}");
        }
    }

    #[test]
    fn redirects_are_not_followed() {
        let (url, _seen) = serve_once(
            "302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n",
        );
        let f = redeem_at(&url, &ClientAuth::None).unwrap_err();
        assert_eq!(f.detail, "the token endpoint answered HTTP 302");
    }

    #[test]
    fn an_unreachable_endpoint_fails_with_a_hint() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = redeem_at(&format!("http://127.0.0.1:{port}"), &ClientAuth::None).unwrap_err();
        assert_eq!(f.reason, Reason::ExchangeFailed);
        assert!(f.hint.unwrap().contains("egress"));
    }
}
