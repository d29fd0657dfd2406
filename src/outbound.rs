//! Outbound HTTP. Calls to identity providers go through one small trait, [`Http`]: a request
//! in (method, URL, headers, body, time budget, how much of the answer to read), a response or
//! a [`TransportError`] out, the error saying how far the request got ([`TransportFailure`]:
//! whether anything may have reached the other side, which decides whether a refresh token may
//! have been used up). A closure implements it too, so provider logic is tested without
//! sockets (oauth2-rs's `SyncHttpClient`). The real implementation is [`Ureq`]; [`agent`] is the
//! one way to build a ureq agent (TLS provider pinned to ring, every timeout set, no redirects
//! followed, error statuses readable), for the calls that are not a provider's (webhooks, the
//! CLI).

use std::sync::Once;
use std::time::Duration;

static PROVIDER: Once = Once::new();

/// Makes ring the process's TLS crypto provider (for ureq and for Redis over TLS).
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        // Fails only if a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The longest a name lookup or a TCP/TLS connect may take within a request's budget.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn agent(timeout: Duration) -> ureq::Agent {
    install_crypto_provider();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // Their own, shorter bounds: a lookup or connect that never completes is then reported
        // as such (nothing was sent), not as the global timeout, which a refresh must count as
        // "may have been sent" (connections::classify).
        .timeout_resolve(Some(timeout.min(CONNECT_TIMEOUT)))
        .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::WebPki)
                .build(),
        )
        .build()
        .into()
}

/// The most of an answer read unless a request says otherwise; providers' answers (tokens,
/// discovery documents, profiles) are a few KiB.
pub const DEFAULT_LIMIT: usize = 256 * 1024;

/// One outbound request. Its `Debug` shows neither header values nor the body: they carry
/// client secrets, codes and tokens.
pub struct Request {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// The time the whole call (connect, send, answer) may take.
    pub budget: Duration,
    /// The most bytes of the answer's body read; a longer one fails the call.
    pub limit: usize,
}

impl Request {
    pub fn new(method: &'static str, url: impl Into<String>, budget: Duration) -> Request {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            budget,
            limit: DEFAULT_LIMIT,
        }
    }

    pub fn get(url: impl Into<String>, budget: Duration) -> Request {
        Request::new("GET", url, budget)
    }

    /// A POST of an `application/x-www-form-urlencoded` body.
    pub fn post_form(url: impl Into<String>, form: &[(&str, &str)], budget: Duration) -> Request {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        Request {
            body: body.into_bytes(),
            ..Request::new("POST", url, budget)
        }
        .header("Content-Type", "application/x-www-form-urlencoded")
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Request {
        self.headers.push((name, value.into()));
        self
    }

    /// A JSON body.
    pub fn json(mut self, body: &serde_json::Value) -> Request {
        self.body = body.to_string().into_bytes();
        self.header("Content-Type", "application/json")
    }

    pub fn limit(mut self, bytes: usize) -> Request {
        self.limit = bytes;
        self
    }

    /// The value of header `name` (case-insensitive), for tests and fakes.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body read as a form, for tests and fakes.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// One field of a form body, for tests and fakes.
    pub fn form_value(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| *k).collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &names)
            .field("body_bytes", &self.body.len())
            .field("budget", &self.budget)
            .finish()
    }
}

/// An answer, whatever its status (redirects are answers too: they are never followed).
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            body: body.into(),
        }
    }

    /// The body as JSON; `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// How a request failed without a whole answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    /// The host name did not resolve.
    Dns,
    /// No connection was made: refused, unreachable, or the connect phase timed out.
    Connect,
    /// The TLS handshake failed (no request byte is sent before it completes).
    Tls,
    /// The request line and headers were not all written: no server acts on half a request.
    HeadNotSent,
    /// A timeout or reset while the body was being sent or the answer awaited or read, or a
    /// budget that ran out in a phase nobody recorded.
    AfterSending,
    /// Something came back that is not HTTP.
    BadResponse,
    /// A local setting (URL, proxy) made the request impossible.
    Config,
}

impl TransportFailure {
    /// Whether the request may have reached the other side (then whatever it asked for may
    /// have been done, a refresh token used up).
    pub fn may_have_been_sent(self) -> bool {
        matches!(
            self,
            TransportFailure::AfterSending | TransportFailure::BadResponse
        )
    }

    /// What a ureq 3 error says. Set a connect timeout below the global one
    /// (`timeout_connect`, `timeout_resolve`): ureq reports a timeout by the budget that ran
    /// out, so with only `timeout_global` a connect that never completed is reported as
    /// `Global`, which must be treated as ambiguous.
    pub fn of_ureq(e: &ureq::Error) -> TransportFailure {
        use std::io::ErrorKind;
        use ureq::Timeout;
        match e {
            ureq::Error::HostNotFound => TransportFailure::Dns,
            ureq::Error::ConnectionFailed => TransportFailure::Connect,
            ureq::Error::Tls(_) => TransportFailure::Tls,
            ureq::Error::Timeout(Timeout::Resolve) => TransportFailure::Dns,
            ureq::Error::Timeout(Timeout::Connect) => TransportFailure::Connect,
            ureq::Error::Timeout(Timeout::SendRequest) => TransportFailure::HeadNotSent,
            ureq::Error::Timeout(_) => TransportFailure::AfterSending,
            ureq::Error::Io(io) => match io.kind() {
                ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::HostUnreachable => TransportFailure::Connect,
                _ => TransportFailure::AfterSending,
            },
            ureq::Error::Protocol(_) => TransportFailure::BadResponse,
            ureq::Error::BadUri(_) | ureq::Error::InvalidProxyUrl | ureq::Error::Http(_) => {
                TransportFailure::Config
            }
            // A body over our limit, a redirect we refused to follow, or anything newer: the
            // request went out and we cannot tell what the provider did with it.
            _ => TransportFailure::AfterSending,
        }
    }
}

/// A request that got no whole answer. `Display` is the transport's own words (never a header
/// value or the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportError {
    pub failure: TransportFailure,
    pub detail: String,
    /// The answer's status when it came and only reading its body failed.
    pub status: Option<u16>,
}

impl TransportError {
    pub fn new(failure: TransportFailure, detail: impl Into<String>) -> TransportError {
        TransportError {
            failure,
            detail: detail.into(),
            status: None,
        }
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Sends one request within its budget. Implemented by [`Ureq`], and by any
/// `Fn(Request) -> Result<Response, TransportError>`.
pub trait Http: Send + Sync {
    fn call(&self, request: Request) -> Result<Response, TransportError>;
}

impl<F> Http for F
where
    F: Fn(Request) -> Result<Response, TransportError> + Send + Sync,
{
    fn call(&self, request: Request) -> Result<Response, TransportError> {
        self(request)
    }
}

/// The real [`Http`]: a ureq agent from [`agent`] per call.
pub struct Ureq;

impl Http for Ureq {
    fn call(&self, r: Request) -> Result<Response, TransportError> {
        let failed = |e: ureq::Error, status: Option<u16>| TransportError {
            failure: TransportFailure::of_ureq(&e),
            detail: e.to_string(),
            status,
        };
        let mut builder = http::Request::builder().method(r.method).uri(&r.url);
        for (name, value) in &r.headers {
            builder = builder.header(*name, value);
        }
        let agent = agent(r.budget);
        let invalid = |e: http::Error| TransportError::new(TransportFailure::Config, e.to_string());
        let result = if r.body.is_empty() && matches!(r.method, "GET" | "HEAD" | "DELETE") {
            agent.run(builder.body(()).map_err(invalid)?)
        } else {
            agent.run(builder.body(r.body).map_err(invalid)?)
        };
        let mut response = result.map_err(|e| failed(e, None))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(r.limit as u64)
            .read_to_vec()
            .map_err(|e| failed(e, Some(status)))?;
        Ok(Response { status, body })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A one-shot HTTP server on loopback: answers the first request with `status_and_rest`
    /// (the raw bytes after the status line's "HTTP/1.1 ") and hands the raw request back.
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

    fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
        request.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn budget() -> Duration {
        Duration::from_secs(10)
    }

    #[test]
    fn a_form_is_posted_with_its_headers_and_the_answer_read_whatever_its_status() {
        let (url, seen) = serve_once(&json_reply("400 Bad Request", r#"{"error":"x"}"#));
        let response = Ureq
            .call(
                Request::post_form(
                    format!("{url}/token"),
                    &[("a", "1 2"), ("b", "&")],
                    budget(),
                )
                .header("Accept", "application/json"),
            )
            .unwrap();
        assert_eq!(response.status, 400);
        assert_eq!(response.json()["error"], "x");
        let request = seen.recv().unwrap();
        assert!(request.starts_with("POST /token HTTP/1.1"), "{request}");
        assert_eq!(header(&request, "accept"), Some("application/json"));
        assert_eq!(
            header(&request, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert!(request.ends_with("\r\n\r\na=1+2&b=%26"), "{request}");
    }

    #[test]
    fn a_get_sends_no_body_and_a_delete_may_carry_one() {
        let (url, seen) = serve_once("200 OK\r\nContent-Length: 2\r\n\r\nok");
        let response = Ureq.call(Request::get(&url, budget())).unwrap();
        assert_eq!((response.status, &response.body[..]), (200, &b"ok"[..]));
        let request = seen.recv().unwrap();
        assert!(request.starts_with("GET / HTTP/1.1"));
        assert!(header(&request, "content-length").is_none(), "{request}");
        let (url, seen) = serve_once("204 No Content\r\nContent-Length: 0\r\n\r\n");
        let response = Ureq
            .call(
                Request::new("DELETE", format!("{url}/grant"), budget())
                    .json(&serde_json::json!({"k": "v"})),
            )
            .unwrap();
        assert_eq!(response.status, 204);
        let request = seen.recv().unwrap();
        assert!(request.starts_with("DELETE /grant HTTP/1.1"));
        assert!(request.ends_with(r#"{"k":"v"}"#), "{request}");
    }

    #[test]
    fn redirects_are_answers_not_followed() {
        let (url, _seen) = serve_once(
            "302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(Ureq.call(Request::get(&url, budget())).unwrap().status, 302);
    }

    #[test]
    fn an_answer_over_the_limit_fails_after_sending_with_its_status() {
        let (url, _seen) = serve_once("200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
        let e = Ureq
            .call(Request::get(&url, budget()).limit(4))
            .unwrap_err();
        assert_eq!(e.failure, TransportFailure::AfterSending);
        assert_eq!(e.status, Some(200));
    }

    #[test]
    fn debug_shows_no_header_value_nor_body() {
        let r = Request::post_form("https://idp.example/token", &[("code", "c0de")], budget())
            .header("Authorization", "Basic c2VjcmV0");
        let shown = format!("{r:?}");
        assert!(shown.contains("Authorization"), "{shown}");
        assert!(
            !shown.contains("c0de") && !shown.contains("c2VjcmV0"),
            "{shown}"
        );
    }

    #[test]
    fn a_closure_is_an_http_client() {
        let http: &dyn Http = &|r: Request| Ok(Response::new(200, r.url.into_bytes()));
        let answer = http
            .call(Request::get("https://x.example/", budget()))
            .unwrap();
        assert_eq!(answer.body, b"https://x.example/");
    }

    #[test]
    fn ureq_errors_map_by_phase() {
        use std::io::{Error, ErrorKind};
        use ureq::Timeout;
        let cases = [
            (ureq::Error::HostNotFound, TransportFailure::Dns),
            (ureq::Error::ConnectionFailed, TransportFailure::Connect),
            (
                ureq::Error::Timeout(Timeout::Connect),
                TransportFailure::Connect,
            ),
            (
                ureq::Error::Timeout(Timeout::Resolve),
                TransportFailure::Dns,
            ),
            (
                ureq::Error::Timeout(Timeout::SendRequest),
                TransportFailure::HeadNotSent,
            ),
            (
                ureq::Error::Timeout(Timeout::SendBody),
                TransportFailure::AfterSending,
            ),
            (
                ureq::Error::Timeout(Timeout::RecvResponse),
                TransportFailure::AfterSending,
            ),
            // The global budget does not say which phase it ran out in.
            (
                ureq::Error::Timeout(Timeout::Global),
                TransportFailure::AfterSending,
            ),
            (
                ureq::Error::Io(Error::from(ErrorKind::ConnectionRefused)),
                TransportFailure::Connect,
            ),
            (
                ureq::Error::Io(Error::from(ErrorKind::ConnectionReset)),
                TransportFailure::AfterSending,
            ),
            (
                ureq::Error::Io(Error::from(ErrorKind::UnexpectedEof)),
                TransportFailure::AfterSending,
            ),
            (ureq::Error::Tls("handshake"), TransportFailure::Tls),
            (
                ureq::Error::BodyExceedsLimit(1),
                TransportFailure::AfterSending,
            ),
        ];
        for (e, expected) in cases {
            assert_eq!(TransportFailure::of_ureq(&e), expected, "{e}");
        }
    }

    #[test]
    fn a_real_refused_connection_is_not_sent() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = agent(Duration::from_secs(5))
            .post(&format!("http://127.0.0.1:{port}/token"))
            .send_form([("grant_type", "refresh_token")])
            .unwrap_err();
        assert!(
            matches!(
                TransportFailure::of_ureq(&e),
                TransportFailure::Connect | TransportFailure::Dns
            ),
            "{e:?}"
        );
        // The same through the trait.
        let e = Ureq
            .call(Request::post_form(
                format!("http://127.0.0.1:{port}/token"),
                &[("grant_type", "refresh_token")],
                Duration::from_secs(5),
            ))
            .unwrap_err();
        assert!(!e.failure.may_have_been_sent(), "{e:?}");
    }
}
