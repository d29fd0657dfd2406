//! Turns what a token endpoint did with a refresh request (an HTTP answer, or how the transport
//! failed) into a `RefreshOutcome`. The line that matters is whether the refresh token may have
//! been used up: only an answer from the provider's OAuth code says it was not (an error) or
//! was (new tokens); everything after the request may have left the machine without such an
//! answer is ambiguous.
//!
//! Two refinements of "an error answer means the token was not consumed": a 5xx other than 503
//! whose body is not an OAuth error is ambiguous (a gateway's 502/504, or a 500 raised part-way
//! through, says nothing about whether the provider rotated the token: Pomerium's "gateway
//! errors"), while 503 and 429 are refusals to start; and a 2xx that does not carry a usable
//! token is ambiguous (the provider answered success, so it may have rotated).

use super::refresher::RefreshOutcome;
use crate::grant::Grant;
/// How a token request failed without an HTTP answer: the outbound layer's words for it.
pub use crate::outbound::TransportFailure;
use serde_json::Value;
use std::time::SystemTime;

/// Classifies one refresh request: `Ok((status, body))` when an HTTP answer came back (its
/// body as text, empty if none), `Err` when the transport failed. `sent_at` is when the
/// request went out (the start of `expires_in`).
pub fn classify(
    result: Result<(u16, &str), TransportFailure>,
    sent_at: SystemTime,
) -> RefreshOutcome {
    let (status, body) = match result {
        Ok(answer) => answer,
        Err(failure) => return failed(failure),
    };
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Some(error) = json["error"].as_str().filter(|e| !e.is_empty()) {
        return match error {
            // The grant is dead, or needs the person (Entra answers multi-factor and consent
            // demands on a refresh this way): either way only a new sign-in helps.
            "invalid_grant"
            | "bad_refresh_token"
            | "interaction_required"
            | "consent_required"
            | "login_required" => RefreshOutcome::InvalidGrant,
            other => RefreshOutcome::Refused(code(other)),
        };
    }
    match status {
        200..=299 => match Grant::from_token_answer(&json, sent_at) {
            Some(grant) => RefreshOutcome::Granted(grant),
            None => RefreshOutcome::Ambiguous("unreadable_success".into()),
        },
        429 | 503 => RefreshOutcome::Refused(format!("http_{status}")),
        500..=599 => RefreshOutcome::Ambiguous(format!("http_{status}")),
        300..=499 => RefreshOutcome::Refused(format!("http_{status}")),
        _ => RefreshOutcome::Ambiguous(format!("http_{status}")),
    }
}

fn failed(failure: TransportFailure) -> RefreshOutcome {
    match failure {
        TransportFailure::Dns => RefreshOutcome::NotSent("dns".into()),
        TransportFailure::Connect => RefreshOutcome::NotSent("connect".into()),
        TransportFailure::Tls => RefreshOutcome::NotSent("tls".into()),
        TransportFailure::HeadNotSent => RefreshOutcome::NotSent("request_not_sent".into()),
        TransportFailure::Config => RefreshOutcome::NotSent("config".into()),
        TransportFailure::AfterSending => RefreshOutcome::Ambiguous("timeout_or_reset".into()),
        TransportFailure::BadResponse => RefreshOutcome::Ambiguous("bad_response".into()),
    }
}

/// A provider's error code as a reason code: what it says, if it looks like a code at all
/// (it reaches logs and the record).
fn code(error: &str) -> String {
    let ok = error.len() <= 64
        && error
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        error.to_string()
    } else {
        "provider_error".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kind(result: Result<(u16, &str), TransportFailure>) -> String {
        match classify(result, SystemTime::UNIX_EPOCH) {
            RefreshOutcome::Granted(_) => "granted".into(),
            RefreshOutcome::InvalidGrant => "invalid_grant".into(),
            RefreshOutcome::Refused(c) => format!("refused:{c}"),
            RefreshOutcome::NotSent(c) => format!("not_sent:{c}"),
            RefreshOutcome::Ambiguous(c) => format!("ambiguous:{c}"),
        }
    }

    #[test]
    fn new_tokens_are_granted_and_keep_what_the_provider_sent() {
        let body =
            r#"{"access_token":"at2","refresh_token":"rt2","expires_in":"3600","scope":"a b"}"#;
        let RefreshOutcome::Granted(g) = classify(Ok((200, body)), SystemTime::UNIX_EPOCH) else {
            panic!("not granted")
        };
        assert_eq!(g.access_token.expose(), "at2");
        assert_eq!(g.refresh_token.unwrap().expose(), "rt2");
        assert_eq!(
            g.expiry,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(3600))
        );
        assert_eq!((g.token_type.as_str(), g.scope.as_str()), ("Bearer", "a b"));
        // No refresh token in the answer: the caller keeps the old one (RFC 6749 6).
        let RefreshOutcome::Granted(g) = classify(
            Ok((200, r#"{"access_token":"at3","token_type":"bearer"}"#)),
            SystemTime::UNIX_EPOCH,
        ) else {
            panic!("not granted")
        };
        assert!(g.refresh_token.is_none() && g.expiry.is_none());
    }

    #[test]
    fn a_dead_grant_is_invalid_grant_whatever_the_status() {
        for (status, body) in [
            (
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS700082"}"#,
            ),
            // GitHub answers errors with 200.
            (
                200,
                r#"{"error":"bad_refresh_token","error_description":"expired"}"#,
            ),
            (400, r#"{"error":"interaction_required"}"#),
        ] {
            assert_eq!(kind(Ok((status, body))), "invalid_grant", "{body}");
        }
    }

    #[test]
    fn other_oauth_errors_are_refusals_that_did_not_use_the_token() {
        assert_eq!(
            kind(Ok((401, r#"{"error":"invalid_client"}"#))),
            "refused:invalid_client"
        );
        assert_eq!(
            kind(Ok((200, r#"{"error":"incorrect_client_credentials"}"#))),
            "refused:incorrect_client_credentials"
        );
        // An OAuth error from the provider's own code, even with a 5xx.
        assert_eq!(
            kind(Ok((500, r#"{"error":"server_error"}"#))),
            "refused:server_error"
        );
        // A code that does not look like one is not copied into the record.
        assert_eq!(
            kind(Ok((400, r#"{"error":"<script>alert(1)</script>"}"#))),
            "refused:provider_error"
        );
        assert_eq!(kind(Ok((429, ""))), "refused:http_429");
        assert_eq!(kind(Ok((503, "<html>busy</html>"))), "refused:http_503");
        assert_eq!(kind(Ok((404, "not found"))), "refused:http_404");
        assert_eq!(kind(Ok((302, ""))), "refused:http_302");
    }

    #[test]
    fn gateway_errors_and_unreadable_successes_are_ambiguous() {
        assert_eq!(kind(Ok((502, "<html>bad gateway"))), "ambiguous:http_502");
        assert_eq!(kind(Ok((504, ""))), "ambiguous:http_504");
        assert_eq!(kind(Ok((500, "oops"))), "ambiguous:http_500");
        assert_eq!(
            kind(Ok((200, "access_token=x&token_type=bearer"))),
            "ambiguous:unreadable_success"
        );
        assert_eq!(
            kind(Ok((200, r#"{"access_token":""}"#))),
            "ambiguous:unreadable_success"
        );
    }

    #[test]
    fn transport_failures_before_sending_are_not_sent_after_are_ambiguous() {
        for (failure, expected) in [
            (TransportFailure::Dns, "not_sent:dns"),
            (TransportFailure::Connect, "not_sent:connect"),
            (TransportFailure::Tls, "not_sent:tls"),
            (TransportFailure::HeadNotSent, "not_sent:request_not_sent"),
            (TransportFailure::Config, "not_sent:config"),
            (TransportFailure::AfterSending, "ambiguous:timeout_or_reset"),
            (TransportFailure::BadResponse, "ambiguous:bad_response"),
        ] {
            assert_eq!(kind(Err(failure)), expected);
        }
    }
}
