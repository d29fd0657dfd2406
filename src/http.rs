//! The socket-free request and response types that handlers see. The server converts hyper
//! requests into `HttpRequest` (with bounded URL, headers and body) and `Response` back, so
//! handlers and their unit tests never touch a socket.

use bytes::Bytes;
use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub struct HttpRequest {
    pub method: String,
    /// The path without the query string, still percent-encoded.
    pub path: String,
    /// The raw query string without the `?` (empty when absent).
    pub query: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: Option<SocketAddr>,
    /// The client the request is attributed to (`client_ip`), resolved once by the server from
    /// the peer and, behind a trusted proxy, the address it forwarded (`client_ip.rs`).
    pub client: Option<IpAddr>,
    /// The listener the request came in on: it decides which routes it may reach
    /// (`routes::Exposure`).
    pub listener: Listener,
}

/// The header a retrieval presents its retrieval secret in: a header, not a query parameter, so
/// it stays out of access logs, proxy logs and browser history.
pub const RETRIEVAL_SECRET_HEADER: &str = "X-Retrieval-Secret";

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The only one (no internal address configured): it serves every route.
    Sole,
    /// The public one, when an internal one is configured too.
    Public,
    /// The internal one (`OAUTH_RELAY_INTERNAL_ADDR`).
    Internal,
}

impl HttpRequest {
    /// Builds a request from a method and a URL such as `/callback?code=x`.
    pub fn new(method: &str, url: &str) -> Self {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            remote: None,
            client: None,
            listener: Listener::Sole,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter, decoded as browsers encode forms (`+` is a space).
    /// A blank value counts as absent, as in the Python server (`parse_qs` drops blanks).
    /// A value that is not UTF-8 once decoded counts as absent; `query_is_utf8` tells the
    /// router to refuse such a request before any handler sees it.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(k, _)| decode_form(k).as_deref() == Some(name))
            .and_then(|(_, v)| decode_form(v))
            .filter(|v| !v.is_empty())
            .map(Cow::into_owned)
    }

    /// Whether every name and value of the query decodes to UTF-8. A lossy decoding would turn
    /// different invalid states into the same one (U+FFFD), stored but never retrievable.
    pub fn query_is_utf8(&self) -> bool {
        self.query
            .split('&')
            .flat_map(|pair| pair.split('='))
            .all(|part| !part.contains('%') || decode_form(part).is_some())
    }

    /// The client the request is attributed to, for per-client shares and quotas: the peer's
    /// address, or behind a trusted proxy (`OAUTH_RELAY_TRUSTED_PROXIES`) the address it
    /// forwarded; never a forwarding header from anyone else. Resolved by the server when it
    /// builds the request; the peer's address for a request built with only `remote`, and
    /// `None` for one built without a socket (unit tests). Count shares under
    /// `client_ip::share_key` of it, so an IPv6 client's /64 is one client.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client.or_else(|| self.remote.map(|a| a.ip()))
    }

    /// The bearer token of an `Authorization: Bearer ...` header.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// Decodes one query-string part as browsers encode forms (`+` is a space); `None` when the
/// bytes are not UTF-8. Borrows when there is nothing to decode (the common case).
fn decode_form(part: &str) -> Option<Cow<'_, str>> {
    if !part.contains(['+', '%']) {
        return Some(Cow::Borrowed(part));
    }
    let spaced = part.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| Cow::Owned(s.into_owned()))
}

/// Percent-decodes one path segment (no `+` rule: that is for query strings).
pub fn decode_segment(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Mostly fixed values (`Cow::Borrowed`), so a page costs no allocation per header.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// `Bytes`, so a page rendered once is sent many times without a copy.
    pub body: Bytes,
    /// For the access log: which route answered, and the hash of the state it concerned.
    pub route: &'static str,
    pub subject: Option<String>,
}

pub const JSON: &str = "application/json";
pub const HTML: &str = "text/html; charset=utf-8";

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response::new(status, JSON, value.to_string().into())
    }

    /// A page for a person: never cached, never leaks the URL (which may hold a code) as a
    /// referrer, runs no script and loads nothing.
    pub fn html(status: u16, body: impl Into<Bytes>) -> Self {
        Response::new(status, HTML, body.into())
            .with_header("Cache-Control", "no-store")
            .with_header("Referrer-Policy", "no-referrer")
            .with_header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            )
            .with_header("X-Frame-Options", "DENY")
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Self {
        Response::new(status, content_type, body.into())
    }

    fn new(status: u16, content_type: &'static str, body: Bytes) -> Self {
        Response {
            status,
            content_type,
            headers: {
                // A page carries six headers: one allocation, not four as the list grows.
                let mut headers = Vec::with_capacity(6);
                headers.push(("X-Content-Type-Options", Cow::Borrowed("nosniff")));
                headers
            },
            body,
            route: "-",
            subject: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// Tags the response for the access log (the state's hash only when that log is on).
    pub fn tagged(mut self, route: &'static str, state: Option<&str>) -> Self {
        self.route = route;
        if crate::logging::enabled(crate::logging::Level::Info) {
            self.subject = state.map(crate::secret::short_hash);
        }
        self
    }

    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("")
    }
}

/// Work whose result comes later, owning all it needs (so the server can spawn it).
pub type Later<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a handler wants done: answer now, or park the request until `key` is notified or the
/// deadline passes, then answer with `answer()`, or run blocking work off the event loop, or
/// await work on it.
pub enum Reply {
    Now(Response),
    Wait(Wait),
    /// Blocking work (an identity provider, the broker's steps on a shared store): run on the
    /// bounded blocking pool, never on the event loop; what it returns is handled like any
    /// reply.
    Later(Box<dyn FnOnce() -> Reply + Send>),
    /// Work that waits without blocking (the relay's steps on Redis): awaited on the event
    /// loop, as a task of its own so it runs to its end even if the client hangs up (a take
    /// must not be cut in half); what it returns is handled like any reply.
    Async(Later<Reply>),
}

impl Reply {
    /// Blocking work whose result is a response.
    pub fn later(job: impl FnOnce() -> Response + Send + 'static) -> Reply {
        Reply::Later(Box::new(move || Reply::Now(job())))
    }

    /// Work to await, as a reply: answered now when it is done at its first look (every step
    /// of a store in memory is), else awaited by the server.
    pub fn awaiting(work: impl Future<Output = Reply> + Send + 'static) -> Reply {
        let mut work: Later<Reply> = Box::pin(work);
        match work
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(reply) => reply,
            Poll::Pending => Reply::Async(work),
        }
    }
}

pub struct Wait {
    pub key: String,
    pub deadline: Instant,
    /// Checked once the request is parked, so a value that landed between the handler's first
    /// look and the parking is not missed, and again on each wake-up: news this request cannot
    /// use (a callback only another's retrieval secret opens) does not end its wait. Its
    /// future is awaited on the event loop; with `blocking`, the call itself blocks (a shared
    /// store) and is run off the event loop.
    pub ready: Arc<dyn Fn() -> Later<bool> + Send + Sync>,
    /// Builds the reply when woken or at the deadline: an answer, or work to run as any
    /// reply's (blocking work runs on the pool anyway; with `blocking`, so does this call).
    pub answer: Box<dyn FnOnce() -> Reply + Send>,
    /// Whether calling `ready` and `answer` blocks (a shared store), so the server calls them
    /// on the blocking pool; in memory they are a map look-up, and the relay's steps on Redis
    /// return futures at once: both are called in place.
    pub blocking: bool,
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Now(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding_matches_browsers() {
        let r = HttpRequest::new("GET", "/callback?code=a%2Fb%2Bc+d&state=s&code=second&e=");
        assert_eq!(r.query_param("code").as_deref(), Some("a/b+c d"));
        assert_eq!(r.query_param("state").as_deref(), Some("s"));
        assert_eq!(r.query_param("e"), None);
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(r.path, "/callback");
        assert!(r.query_is_utf8());
        let bad = HttpRequest::new("GET", "/callback?code=c&state=%FF%FE");
        assert!(!bad.query_is_utf8());
        assert_eq!(bad.query_param("state"), None);
    }

    #[test]
    fn bearer_token_parsing() {
        let r = HttpRequest::new("GET", "/").with_header("Authorization", "Bearer  abc ");
        assert_eq!(r.bearer_token(), Some("abc"));
        let r = HttpRequest::new("GET", "/").with_header("authorization", "Basic abc");
        assert_eq!(r.bearer_token(), None);
        let r = HttpRequest::new("GET", "/").with_header("authorization", "Bearer ");
        assert_eq!(r.bearer_token(), None);
    }

    #[test]
    fn segments_decode_without_plus_rule() {
        assert_eq!(decode_segment("a%2Fb+c").as_deref(), Some("a/b+c"));
        assert_eq!(decode_segment("%FF"), None);
    }
}
