//! How a fake identity provider runs, above the HTTP server of fake_http.rs: the state behind
//! one lock, delays cut short when the fake is dropped, the in-process `sign_in` plumbing, reply
//! helpers, and the helpers tests share (PKCE, base64url, query parameters). The authorization
//! server itself (codes, grants, tokens, rotation) is fake_as.rs; a provider's file keeps only
//! what is its own: endpoints, rules, quirks.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;

use super::fake_http::{FakeReply, FakeRequest, FakeServer};

/// What a fake's handlers share: its state `S` behind one lock, what is fixed at start `K`
/// (read without the lock), its base URL, and the stop flag that ends delayed replies.
pub struct Core<S, K = ()> {
    state: Mutex<S>,
    pub fixed: K,
    pub base: String,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

impl<S, K> Core<S, K> {
    /// The state; a panicked handler does not poison it for the test.
    pub fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.base.clone()
    }

    /// Sleeps `d`, or less when the fake is being dropped.
    pub fn nap(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let deadline = Instant::now() + d;
        let mut stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        while !*stop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            stop = self
                .stop_cv
                .wait_timeout(stop, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Runs `url` (an authorize URL, as the broker built it) in-process, as a browser would
    /// fetch it: `run(path, request)` answers, and the redirect's `Location` comes back, or the
    /// page shown instead. `provider` names the fake in the error for a URL that is not its own.
    pub fn visit(
        &self,
        url: &str,
        provider: &str,
        run: impl FnOnce(&str, &FakeRequest) -> FakeReply,
    ) -> Result<String, SignInError> {
        let Some(target) = url.strip_prefix(&self.base) else {
            return Err(SignInError {
                status: 0,
                body: format!("{url} is not on this fake {provider} ({})", self.base),
            });
        };
        let request = FakeRequest {
            method: "GET".into(),
            url: target.to_string(),
            headers: vec![],
            body: vec![],
        };
        let (path, _) = target.split_once('?').unwrap_or((target, ""));
        let reply = run(path, &request);
        if reply.status == 302 {
            if let Some((_, location)) = reply.headers.iter().find(|(n, _)| *n == "Location") {
                return Ok(location.clone());
            }
        }
        Err(SignInError {
            status: reply.status,
            body: String::from_utf8_lossy(&reply.body).into_owned(),
        })
    }
}

/// The authorize endpoint answered with a page instead of a redirect (`status`, `body`);
/// `status` 0: the URL given to `sign_in` / `decline` is not this fake's.
#[derive(Clone, Debug)]
pub struct SignInError {
    pub status: u16,
    pub body: String,
}

/// A running fake: its core, shared with the server's threads, and the server on
/// `127.0.0.1:<free port>`. Dropping it ends delayed replies, then stops the server (threads
/// joined). Dereferences to the core.
pub struct Running<S, K = ()> {
    shared: Arc<Core<S, K>>,
    _server: FakeServer,
}

impl<S: Send + 'static, K: Send + Sync + 'static> Running<S, K> {
    /// Starts a server named `name` whose requests go to `handle(core, request)`.
    pub fn serve(
        name: &str,
        state: S,
        fixed: K,
        handle: impl Fn(&Core<S, K>, &FakeRequest) -> FakeReply + Send + Sync + 'static,
    ) -> Running<S, K> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Core {
            state: Mutex::new(state),
            fixed,
            base: format!("http://127.0.0.1:{port}"),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        });
        let server = {
            let shared = shared.clone();
            FakeServer::start_on(name, listener, move |request| handle(&shared, request))
        };
        Running {
            shared,
            _server: server,
        }
    }
}

impl<S, K> std::ops::Deref for Running<S, K> {
    type Target = Core<S, K>;

    fn deref(&self) -> &Core<S, K> {
        &self.shared
    }
}

impl<S, K> Drop for Running<S, K> {
    fn drop(&mut self) {
        // Replies held back by a configured delay end now.
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.stop_cv.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Replies

/// A reply with `headers` in this order.
pub fn reply(status: u16, headers: Vec<(&'static str, String)>, body: Vec<u8>) -> FakeReply {
    FakeReply {
        status,
        headers,
        body,
    }
}

/// A reply with only a `Content-Type`.
pub fn typed_reply(status: u16, content_type: &str, body: Vec<u8>) -> FakeReply {
    reply(
        status,
        vec![("Content-Type", content_type.to_string())],
        body,
    )
}

/// `v` as JSON, then `headers`.
pub fn json_reply(status: u16, v: &Value, headers: &[(&'static str, &str)]) -> FakeReply {
    let mut all = vec![(
        "Content-Type",
        "application/json; charset=utf-8".to_string(),
    )];
    all.extend(headers.iter().map(|(n, v)| (*n, v.to_string())));
    reply(status, all, v.to_string().into_bytes())
}

/// An HTML page.
pub fn html_reply(status: u16, body: String) -> FakeReply {
    typed_reply(status, "text/html; charset=utf-8", body.into_bytes())
}

/// A 302 to `location`, then `headers`.
pub fn redirect_reply(location: String, headers: &[(&'static str, &str)]) -> FakeReply {
    let mut all = vec![("Location", location)];
    all.extend(headers.iter().map(|(n, v)| (*n, v.to_string())));
    reply(302, all, Vec::new())
}

// ---------------------------------------------------------------------------------------------
// Helpers for tests (the same names and meanings in every fake, which re-exports them)

/// S256 PKCE challenge: base64url-no-pad(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    b64url_encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

/// A fresh random PKCE verifier (43 characters, as RFC 7636 recommends).
pub fn pkce_verifier() -> String {
    random_b64(32)
}

/// base64url without padding.
pub fn b64url_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// base64url, padded or not.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// The query parameters of a URL (e.g. a `Location`), decoded; empty without a query.
pub fn query_params(url: &str) -> Vec<(String, String)> {
    let without_fragment = url.split('#').next().unwrap_or("");
    match without_fragment.split_once('?') {
        Some((_, q)) => form_urlencoded::parse(q.as_bytes()).into_owned().collect(),
        None => Vec::new(),
    }
}

/// The first value of `key` in decoded parameters.
pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// Helpers for the fakes

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("getrandom");
    buf
}

/// `n` random bytes, base64url.
pub fn random_b64(n: usize) -> String {
    b64url_encode(&random_bytes(n))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// 43 to 128 characters of RFC 7636's unreserved set.
pub fn is_pkce_verifier(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
}

/// `base` with `params` appended to its query.
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", ser.finish())
}

/// `Authorization: Basic` credentials (standard base64), form-decoded as RFC 6749 §2.3.1 asks.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    parse_basic_with(value, |text| {
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    })
}

/// `parse_basic` with a provider's own idea of base64 (`decode`).
pub fn parse_basic_with(
    value: &str,
    decode: impl FnOnce(&str) -> Option<Vec<u8>>,
) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(decode(rest.trim())?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    Some((unescape(id), unescape(secret)))
}

/// Request parameters: the query string, then a form or JSON body.
pub fn request_params(request: &FakeRequest) -> Vec<(String, String)> {
    let query = request.url.split_once('?').map_or("", |(_, q)| q);
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let content_type = request
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&request.body) {
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                params.push((k, v));
            }
        }
    } else {
        params.extend(form_urlencoded::parse(&request.body).into_owned());
    }
    params
}
