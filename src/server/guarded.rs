//! The socket as hyper sees it: stalled writes fail, hyper's 431s are rewritten where another
//! status is due, and a head that frames its body two ways marks its connection.

use super::conns::Slot;
use super::raw;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The socket as hyper sees it, with what hyper does not do:
/// - a write that makes no progress for `stall` fails, so a client that never reads its answers
///   cannot hold a connection (and its buffers) for ever;
/// - when hyper answers 431 to a head whose request line never ended, the answer becomes 414:
///   the line that did not fit is the request line; to a head whose `Content-Length` it cannot
///   represent, 413;
/// - a head naming both `Content-Length` and `Transfer-Encoding` marks the connection, and its
///   request is refused (hyper would have read it as chunked).
///
/// Lines and heads are tracked from the bytes read. A request body is not told apart from a
/// head, so a body crafted to look like header lines can at worst get its own connection a 400
/// or a 431 where 414 was due: nothing another client would notice.
pub(super) struct Guarded {
    inner: TcpStream,
    stall: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    slot: Arc<Slot>,
    /// Lines completed in the head being read (0: still in its request line).
    line_in_head: u32,
    /// Bytes of the current line, line ends excluded (0 at a blank line: the head ends).
    line_len: usize,
    /// The current line's first bytes, lower-cased: enough for the two header names and a
    /// `Content-Length` value.
    prefix: [u8; 48],
    head_has_length: bool,
    head_has_coding: bool,
    /// The head being read, and the last one completed, declared a length hyper cannot
    /// represent (at least 2^64 - 2): hyper answers 431 to that, and it becomes 413.
    head_length_unrepresentable: bool,
    last_length_unrepresentable: bool,
    /// A replacement answer being written, and how much of it is out.
    rewrite: Option<(&'static [u8], usize)>,
}

impl Guarded {
    pub(super) fn new(inner: TcpStream, stall: Duration, slot: Arc<Slot>) -> Self {
        Guarded {
            inner,
            stall,
            stalled: None,
            slot,
            line_in_head: 0,
            line_len: 0,
            prefix: [0; 48],
            head_has_length: false,
            head_has_coding: false,
            head_length_unrepresentable: false,
            last_length_unrepresentable: false,
            rewrite: None,
        }
    }

    fn track(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' if self.line_len == 0 => {
                    self.line_in_head = 0;
                    self.head_has_length = false;
                    self.head_has_coding = false;
                    self.last_length_unrepresentable = self.head_length_unrepresentable;
                    self.head_length_unrepresentable = false;
                }
                b'\n' => {
                    self.line_ended();
                    self.line_in_head = self.line_in_head.saturating_add(1);
                    self.line_len = 0;
                }
                b'\r' => {}
                _ => {
                    if let Some(p) = self.prefix.get_mut(self.line_len) {
                        *p = b.to_ascii_lowercase();
                    }
                    self.line_len += 1;
                }
            }
        }
    }

    fn line_ended(&mut self) {
        if self.line_in_head == 0 {
            return;
        }
        let line = &self.prefix[..self.line_len.min(self.prefix.len())];
        if let Some(value) = line.strip_prefix(b"content-length:") {
            self.head_has_length = true;
            let digits = value.trim_ascii();
            let huge = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u128>().ok())
                .is_some_and(|n| n >= u64::MAX as u128 - 2);
            // A value longer than the prefix holds is at least that large too.
            self.head_length_unrepresentable |= huge
                || (self.line_len > self.prefix.len() && digits.iter().all(u8::is_ascii_digit));
        }
        self.head_has_coding |= line.starts_with(b"transfer-encoding:");
        if self.head_has_length && self.head_has_coding {
            self.slot.framing_conflict.store(true, Ordering::Release);
        }
    }

    /// `Pending` while no progress is made, an error once that has lasted `stall`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let stall = self.stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => match self.stalled(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.track(&buf.filled()[before..]);
        }
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() && buf.starts_with(b"HTTP/1.1 431 ") {
            if this.line_in_head == 0 && this.line_len > 0 {
                this.rewrite = Some((raw::uri_too_long(), 0));
            } else if this.line_len == 0 && this.last_length_unrepresentable {
                this.rewrite = Some((raw::body_too_large(), 0));
            }
        }
        let Some((answer, mut sent)) = this.rewrite else {
            return this.poll_write_inner(cx, buf);
        };
        while sent < answer.len() {
            match this.poll_write_inner(cx, &answer[sent..]) {
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.rewrite = Some((answer, sent));
                    return Poll::Pending;
                }
            }
            this.rewrite = Some((answer, sent));
        }
        // hyper's own answer is taken as written; it closes the connection next.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
