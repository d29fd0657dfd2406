//! The answers the server writes as bytes where hyper cannot answer: to a connection refused at
//! the cap or at its client's share (before hyper sees it), and in place of hyper's 431 where
//! 414 or 413 is due. Their status, words and headers are `error.rs`'s, as every other answer's
//! are; only the framing is written here, each answer once.

use super::conns::Refusal;
use crate::error::Error;
use std::sync::LazyLock;

static CONNECTIONS_FULL: LazyLock<Vec<u8>> = LazyLock::new(|| answer(Error::ConnectionsFull));
static CLIENT_CONNECTIONS_FULL: LazyLock<Vec<u8>> =
    LazyLock::new(|| answer(Error::ClientConnectionsFull));
static URI_TOO_LONG: LazyLock<Vec<u8>> = LazyLock::new(|| answer(Error::UrlTooLong));
static BODY_TOO_LARGE: LazyLock<Vec<u8>> = LazyLock::new(|| answer(Error::BodyTooLarge));

/// The answer to a connection that was not let in.
pub(super) fn refusal(refusal: Refusal) -> &'static [u8] {
    match refusal {
        Refusal::Full => &CONNECTIONS_FULL,
        Refusal::ClientShare => &CLIENT_CONNECTIONS_FULL,
    }
}

/// In place of hyper's 431 to a request line that never ended.
pub(super) fn uri_too_long() -> &'static [u8] {
    &URI_TOO_LONG
}

/// In place of hyper's 431 to a `Content-Length` it cannot represent.
pub(super) fn body_too_large() -> &'static [u8] {
    &BODY_TOO_LARGE
}

/// `error`'s answer for a program (its JSON face) as HTTP/1.1 bytes that close the connection:
/// a fresh connection's first answer, or the last one on a connection whose stream cannot be
/// trusted any more.
fn answer(error: Error) -> Vec<u8> {
    let reason = hyper::StatusCode::from_u16(error.status())
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let header = error.header();
    let response = error.into_response();
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\n",
        response.status, response.content_type
    );
    if let Some((name, value)) = header {
        head.push_str(&format!("{}: {value}\r\n", name.to_ascii_lowercase()));
    }
    head.push_str(&format!(
        "connection: close\r\ncontent-length: {}\r\n\r\n",
        response.body.len()
    ));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status line and headers, and the body as JSON.
    fn parse(raw: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len(), "{head}");
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn the_raw_refusals_are_well_formed() {
        for raw in [refusal(Refusal::Full), refusal(Refusal::ClientShare)] {
            let (head, json) = parse(raw);
            assert_eq!(json["status"], "error");
            assert!(head.contains("\r\nretry-after: 5\r\n"));
        }
        assert!(refusal(Refusal::ClientShare).starts_with(b"HTTP/1.1 429 "));
    }

    /// The heads are the ones these answers always had (but for the lengths of the 414 and the
    /// 413, which were one byte too long when written by hand), and the words error.rs's.
    #[test]
    fn the_raw_answers_are_error_rs_words_in_the_heads_they_always_had() {
        for (raw, head, message) in [
            (
                refusal(Refusal::Full),
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 68",
                "Too many connections; try again later",
            ),
            (
                refusal(Refusal::ClientShare),
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 85",
                "Too many connections from this client; try again later",
            ),
            (
                uri_too_long(),
                "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 51",
                "Request URL too long",
            ),
            (
                body_too_large(),
                "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 53",
                "Request body too large",
            ),
        ] {
            let (got_head, json) = parse(raw);
            assert_eq!(got_head, head);
            assert_eq!(
                json,
                serde_json::json!({ "status": "error", "message": message })
            );
        }
        // Byte for byte the body any other JSON refusal of the same error has.
        for (raw, error) in [
            (refusal(Refusal::Full), Error::ConnectionsFull),
            (refusal(Refusal::ClientShare), Error::ClientConnectionsFull),
            (uri_too_long(), Error::UrlTooLong),
            (body_too_large(), Error::BodyTooLarge),
        ] {
            assert!(raw.ends_with(&error.into_response().body));
        }
    }
}
