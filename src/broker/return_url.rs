//! The way back to the chat: a session may carry a `return_url` that the success page offers as
//! a plain link ("Back to <host>"). Only URLs whose origin the operator allowed
//! (`OAUTH_RELAY_RETURN_URL_ORIGINS`) are accepted, so the broker can never send a person to a
//! place of a caller's choosing (an open redirect, or a phishing page behind our name).
//!
//! The check compares origins exactly (scheme, host, port; default ports made explicit) and
//! refuses every form a browser reads differently from a URI parser: backslashes (a browser
//! turns them into slashes), whitespace and control characters (a browser drops tabs and
//! newlines inside a URL), non-ASCII, and user information (`https://chat.example.com@evil`).

pub const VAR: &str = "OAUTH_RELAY_RETURN_URL_ORIGINS";

/// Longest `return_url` accepted, in bytes.
pub const MAX_LEN: usize = 2048;

/// `scheme://host[:port]`, lower-cased, the port only when it is not the scheme's default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    fn of(uri: &http::Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let authority = uri.authority()?;
        // User information: `https://chat.example.com@evil.test` is evil.test to a browser.
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        let default = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        // The port as written, after the host (`[::1]` keeps its colons inside the brackets):
        // `http::Uri` lets through ports that are not numbers a browser accepts (`:99999`,
        // `:+443`), and then reports no port at all, or 443.
        let written = &authority.as_str()[authority.host().len()..];
        let port = match written.strip_prefix(':') {
            None if written.is_empty() => default,
            Some("") => default,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            _ => return None,
        };
        Some(Origin { scheme, host, port })
    }

    fn loopback(&self) -> bool {
        matches!(self.host.as_str(), "127.0.0.1" | "localhost" | "[::1]")
    }

    /// The origin as a browser serializes it.
    pub fn serialize(&self) -> String {
        let default = if self.scheme == "https" { 443 } else { 80 };
        if self.port == default {
            format!("{}://{}", self.scheme, self.host)
        } else {
            format!("{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// Printable ASCII without backslash: what a browser and `http::Uri` read alike.
fn plain(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
}

/// Parses the operator's comma-separated list of origins. Each must be `https://host[:port]`
/// (`http://` only on 127.0.0.1, localhost or [::1]), with no path, query, fragment or user
/// information; blanks between commas are ignored. Errors name the variable.
pub fn parse_origins(list: &str) -> Result<Vec<Origin>, String> {
    let mut origins = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| format!("{VAR}: {entry:?} {why}");
        let origin_only = entry.trim_end_matches('/');
        if !plain(entry) || origin_only.contains(['#', '?']) {
            return Err(bad("is not an origin (scheme://host[:port])"));
        }
        let uri: http::Uri = origin_only
            .parse()
            .map_err(|_| bad("is not an origin (scheme://host[:port])"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("must be an origin only, without a path"));
        }
        let origin =
            Origin::of(&uri).ok_or_else(|| bad("is not an origin (scheme://host[:port])"))?;
        if origin.scheme != "https" && !origin.loopback() {
            return Err(bad(
                "must be https:// (http:// only on 127.0.0.1, localhost or [::1])",
            ));
        }
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(origins)
}

/// A caller's `return_url`, checked against the allowed origins: the URL as given (the link's
/// `href`) and the host the page names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnUrl {
    pub url: String,
    pub host: String,
}

/// Checks `url` (exactly as the caller sent it) against `allowed`.
pub fn check(url: &str, allowed: &[Origin]) -> Result<ReturnUrl, &'static str> {
    if allowed.is_empty() {
        return Err(
            "return_url is not accepted here: the operator must allow its origin in \
                    OAUTH_RELAY_RETURN_URL_ORIGINS",
        );
    }
    const NOT_ABSOLUTE: &str = "return_url must be an absolute https:// URL";
    if url.is_empty() || url.len() > MAX_LEN {
        return Err("return_url must be a URL of at most 2048 characters");
    }
    if !plain(url) {
        return Err(NOT_ABSOLUTE);
    }
    // `http::Uri` has no fragments; chat apps put rooms in them (`/#/room/...`).
    let before_fragment = url.split('#').next().unwrap_or_default();
    let uri: http::Uri = before_fragment.parse().map_err(|_| NOT_ABSOLUTE)?;
    // A scheme with an authority, written `scheme://` (not `https:chat.example.com`).
    let origin = Origin::of(&uri).ok_or(NOT_ABSOLUTE)?;
    if !url[origin.scheme.len()..].starts_with("://") {
        return Err(NOT_ABSOLUTE);
    }
    if !allowed.contains(&origin) {
        return Err(
            "return_url's origin is not among those the operator allows \
                    (OAUTH_RELAY_RETURN_URL_ORIGINS)",
        );
    }
    Ok(ReturnUrl {
        url: url.to_string(),
        host: origin.host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<Origin> {
        parse_origins(
            "https://chat.example.com, https://Teams.Example.com:8443/,http://127.0.0.1:9",
        )
        .unwrap()
    }

    #[test]
    fn origins_are_normalised_and_checked() {
        let o = allowed();
        assert_eq!(
            o.iter().map(Origin::serialize).collect::<Vec<_>>(),
            [
                "https://chat.example.com",
                "https://teams.example.com:8443",
                "http://127.0.0.1:9"
            ]
        );
        assert_eq!(parse_origins("").unwrap(), []);
        assert_eq!(
            parse_origins("http://[::1]:9").unwrap(),
            [Origin {
                scheme: "http".into(),
                host: "[::1]".into(),
                port: 9
            }]
        );
        assert_eq!(
            parse_origins("https://a.example:443,https://a.example")
                .unwrap()
                .len(),
            1
        );
        for bad in [
            "https://chat.example.com:99999",
            "https://chat.example.com:65536",
            "https://chat.example.com:+443",
            "https://chat.example.com:443a",
            "https://[::1]:+9",
            "https://[::1]:99999",
            "http://chat.example.com",
            "https://chat.example.com/path",
            "https://chat.example.com?x",
            "https://chat.example.com#x",
            "https://user@chat.example.com",
            "chat.example.com",
            "ftp://chat.example.com",
            "javascript:alert(1)",
            "https://chat\\example.com",
            "https://",
        ] {
            let e = parse_origins(bad).unwrap_err();
            assert!(e.starts_with(VAR), "{bad}: {e}");
        }
    }

    #[test]
    fn only_urls_of_an_allowed_origin_pass() {
        let o = allowed();
        for good in [
            "https://chat.example.com",
            "https://chat.example.com/",
            "https://chat.example.com/c/123?x=1&y=2",
            "https://CHAT.example.com:443/#/room/!abc:example.com",
            "https://chat.example.com:/empty-port-is-the-default",
            "https://chat.example.com:000000443/leading-zeros",
            "https://teams.example.com:8443/l/chat",
            "http://127.0.0.1:9/back",
        ] {
            assert_eq!(
                check(good, &o).map(|r| r.url),
                Ok(good.to_string()),
                "{good}"
            );
        }
        assert_eq!(
            check("https://CHAT.example.com/x", &o).unwrap().host,
            "chat.example.com"
        );
        for bad in [
            "https://chat.example.com.evil.test/",
            "https://chat.example.com@evil.test/",
            "https://user:pw@chat.example.com/",
            "https://evil.test\\@chat.example.com/",
            "https://chat.example.com\\.evil.test/",
            "https:\\\\chat.example.com/",
            "javascript:alert(1)//https://chat.example.com",
            "javascript://chat.example.com/%0aalert(1)",
            "//chat.example.com/x",
            "/x",
            "chat.example.com/x",
            "https:chat.example.com/x",
            "https://chat.example.com:8443/",
            "https://chat.example.com:99999/",
            "https://chat.example.com:65979/",
            "https://chat.example.com:+443/",
            "https://chat.example.com:-443/",
            "https://chat.example.com:443x/",
            "https://chat.example.com:0x1bb/",
            "https://chat.example.com:4 43/",
            "https://chat.example.com:443:443/",
            "http://chat.example.com/",
            "https://teams.example.com/",
            "http://127.0.0.1:10/",
            "https://chat.example.com/a b",
            " https://chat.example.com/",
            "https://chat.exa\tmple.com/",
            "https://chat.example.com/\n",
            "https://chät.example.com/",
            "data:text/html,hi",
            "",
        ] {
            assert!(check(bad, &o).is_err(), "{bad:?} passed");
        }
        let long = format!("https://chat.example.com/{}", "a".repeat(MAX_LEN));
        assert!(check(&long, &o).is_err());
        let e = check("https://chat.example.com/", &[]).unwrap_err();
        assert!(e.contains("operator must allow"), "{e}");
    }
}
