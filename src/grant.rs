//! The tokens a token endpoint hands out (`Grant`), as a code redemption, a refresh and the kept
//! connections all read them. A leaf module: the providers produce grants and the broker and the
//! connections core consume them, without depending on each other for the type.

use crate::secret::Secret;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// Tokens from the token endpoint, before any identity check. `Debug` shows no token: they are
/// `Secret`s.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
    pub token_type: String,
    pub scope: String,
    /// `None`: the token does not expire (no `expires_in`).
    pub expiry: Option<SystemTime>,
}

/// The longest lifetime a token answer's `expires_in` is taken to mean (ten years): real access
/// tokens live minutes to hours, and a bound keeps every expiry printable and comparable.
pub const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 3600;

impl Grant {
    /// A successful token answer (RFC 6749 5.1) as a `Grant`: `None` unless it has a non-empty
    /// `access_token`. `sent_at` is when the request went out (the start of `expires_in`, which
    /// some servers send as a string; none means the token does not expire, as GitHub's OAuth
    /// apps' do not).
    pub fn from_token_answer(body: &Value, sent_at: SystemTime) -> Option<Grant> {
        let token = |name: &str| {
            body[name]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(Secret::new)
        };
        let access_token = token("access_token")?;
        let expires_in = match &body["expires_in"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        Some(Grant {
            access_token,
            refresh_token: token("refresh_token"),
            id_token: token("id_token"),
            token_type: body["token_type"].as_str().unwrap_or("Bearer").to_string(),
            scope: body["scope"].as_str().unwrap_or_default().to_string(),
            // A provider's `expires_in` is trusted only up to a bound: a huge one would overflow
            // the clock (a panic after the one-time take) or print past the year 9999.
            expiry: expires_in
                .map(|s| s.min(MAX_EXPIRES_IN_SECS))
                .and_then(|s| sent_at.checked_add(Duration::from_secs(s))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_huge_expires_in_is_bounded_not_a_panic() {
        let at = SystemTime::UNIX_EPOCH;
        for huge in [
            json!(u64::MAX),
            json!("18446744073709551615"),
            json!(300_000_000_000u64),
        ] {
            let g = Grant::from_token_answer(&json!({"access_token": "a", "expires_in": huge}), at)
                .unwrap();
            assert_eq!(
                g.expiry,
                Some(at + Duration::from_secs(MAX_EXPIRES_IN_SECS)),
                "{huge}"
            );
        }
    }

    #[test]
    fn a_token_answer_needs_an_access_token_and_may_omit_the_rest() {
        let at = SystemTime::UNIX_EPOCH;
        let g = Grant::from_token_answer(
            &json!({"access_token": "a", "refresh_token": "r", "expires_in": "60", "scope": "x"}),
            at,
        )
        .unwrap();
        assert_eq!(g.refresh_token.unwrap().expose(), "r");
        assert_eq!(g.expiry, Some(at + Duration::from_secs(60)));
        assert_eq!((g.token_type.as_str(), g.scope.as_str()), ("Bearer", "x"));
        let g = Grant::from_token_answer(&json!({"access_token": "a", "refresh_token": ""}), at)
            .unwrap();
        assert!(g.refresh_token.is_none() && g.id_token.is_none() && g.expiry.is_none());
        for no in [
            json!({"access_token": ""}),
            json!({}),
            json!(["access_token"]),
        ] {
            assert!(Grant::from_token_answer(&no, at).is_none(), "{no}");
        }
    }
}
