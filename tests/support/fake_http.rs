//! The small HTTP/1.1 server every fake upstream is built on: std threads, one per connection,
//! one request per connection (`Connection: close`), bodies by `Content-Length` only. Fakes
//! implement `handle(&FakeRequest) -> FakeReply`; this file owns the sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What a fake needs of a request.
pub struct FakeRequest {
    pub method: String,
    /// The request target as sent: path and query.
    pub url: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct FakeReply {
    /// 0: no answer at all, the connection is closed (`FakeReply::no_answer`).
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl FakeReply {
    /// The connection is closed after the request was read, without a byte of answer: what a
    /// client sees when a proxy or the upstream dies mid-request.
    pub fn no_answer() -> FakeReply {
        FakeReply {
            status: 0,
            headers: vec![],
            body: vec![],
        }
    }
}

/// Bodies larger than this are refused with 413, like a real front end would.
const MAX_BODY: usize = 64 * 1024;
const MAX_HEAD_LINES: usize = 200;

/// A fake listening on `127.0.0.1:<free port>`; stops (and joins its accept thread) on drop.
pub struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub fn start(
        name: &str,
        handle: impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake upstream");
        FakeServer::start_on(name, listener, handle)
    }

    /// Serves on a listener bound beforehand (a fake whose own URL must be known first).
    pub fn start_on(
        name: &str,
        listener: TcpListener,
        handle: impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static,
    ) -> FakeServer {
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let accept = {
            let stop = stop.clone();
            let name = name.to_string();
            std::thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        let handle = handle.clone();
                        let _ = std::thread::Builder::new()
                            .name(format!("{name}-conn"))
                            .spawn(move || serve(stream, &*handle));
                    }
                })
                .expect("spawn a fake's accept thread")
        };
        FakeServer {
            port,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, handle: &dyn Fn(&FakeRequest) -> FakeReply) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let reply = match read_request(&stream) {
        Ok(request) => handle(&request),
        Err(status) => FakeReply {
            status,
            headers: vec![],
            body: vec![],
        },
    };
    if reply.status == 0 {
        return;
    }
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = writer.write_all(head.as_bytes());
    let _ = writer.write_all(&reply.body);
    let _ = writer.flush();
}

fn read_request(stream: &TcpStream) -> Result<FakeRequest, u16> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|_| 400u16)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(url)) = (parts.next(), parts.next()) else {
        return Err(400);
    };
    let (method, url) = (method.to_string(), url.to_string());
    let mut headers = Vec::new();
    for _ in 0..MAX_HEAD_LINES {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|_| 400u16)?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            let length = headers
                .iter()
                .find(|(n, _): &&(String, String)| n == "content-length")
                .map(|(_, v)| v.parse::<usize>().map_err(|_| 400u16))
                .transpose()?
                .unwrap_or(0);
            if length > MAX_BODY {
                return Err(413);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).map_err(|_| 400u16)?;
            return Ok(FakeRequest {
                method,
                url,
                headers,
                body,
            });
        }
        let (name, value) = line.split_once(':').ok_or(400u16)?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Err(431)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
