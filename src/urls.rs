//! The rules every configured URL follows (the public URL, a provider's endpoints and issuer, a
//! webhook): https, or plain http on loopback for local testing. A leaf module, so settings of
//! any part (broker, providers, events) check URLs the same way without depending on each other.

/// HTTPS, or plain HTTP on a loopback host (local testing). Returned without a trailing slash.
pub fn checked_url(value: &str, name: &str) -> Result<String, String> {
    let value = value.trim().trim_end_matches('/');
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("{name} is not a valid URL: {value:?}"))?;
    let host = uri.host().ok_or(format!("{name} has no host: {value:?}"))?;
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1");
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        _ => {
            return Err(format!(
            "{name} must be an https:// URL (http:// only on 127.0.0.1 or localhost): {value:?}"
        ))
        }
    }
    if uri.query().is_some() {
        return Err(format!("{name} must not have a query string"));
    }
    Ok(value.to_string())
}

/// An issuer identifier (OpenID Connect Discovery 3): an https URL (http on loopback, for
/// tests) without query or fragment, kept exactly as given (a trailing slash is part of it),
/// because the `iss` claim and the discovered `issuer` must equal it byte for byte.
pub fn checked_issuer(value: &str, var: &str) -> Result<String, String> {
    checked_url(value, var)?;
    if value.contains('#') {
        return Err(format!("{var} must not have a fragment"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_except_on_loopback() {
        assert_eq!(
            checked_url("https://x.example/", "V").unwrap(),
            "https://x.example"
        );
        assert!(checked_url("http://127.0.0.1:8000", "V").is_ok());
        assert!(checked_url("http://localhost:1", "V").is_ok());
        let e = checked_url("http://relay.example", "WK_PUBLIC_BASE_URL").unwrap_err();
        assert!(e.contains("WK_PUBLIC_BASE_URL"));
        assert!(checked_url("ftp://x", "V").is_err());
        assert!(checked_url("not a url", "V").is_err());
    }

    #[test]
    fn issuers_are_kept_exactly_and_have_no_fragment() {
        assert_eq!(
            checked_issuer("https://idp.example/", "V").unwrap(),
            "https://idp.example/"
        );
        assert!(checked_issuer("https://idp.example/#x", "V").is_err());
        assert!(checked_issuer("http://idp.example", "V").is_err());
    }
}
