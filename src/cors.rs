//! Cross-origin access for pages in browsers (CORS): which origins may read the answers of the
//! routes the routing table opens to pages (`routes::Route::cors`), and the preflight answers
//! that let such a page send what needs one (a bearer token, a retrieval secret, a JSON body).
//! The operator chooses the origins (`OAUTH_RELAY_CORS_ORIGINS`): `*`, any, as the Python server
//! answered, or a list, each answer then naming the request's origin when it is listed.

use crate::http::Response;
use std::borrow::Cow;

/// How long a browser may reuse a preflight's answer, in seconds (Chromium keeps at most 2 h).
pub const MAX_AGE_SECS: &str = "600";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// `Access-Control-Allow-Origin: *`: any page may read the answers (none sends cookies).
    Any,
    /// Only pages of these origins (`scheme://host[:port]`, as browsers serialize them: lower
    /// case, no default port); the answer names the one that asked, and varies by `Origin`.
    Only(Vec<String>),
}

impl Cors {
    /// `*`, or comma-separated origins (`https://app.example.com,http://localhost:3000`); blank
    /// entries are ignored, and a list of none lets no page on another origin read anything.
    /// Errors name the variable and its flag.
    pub fn parse(list: &str) -> Result<Cors, String> {
        const NAME: &str = "OAUTH_RELAY_CORS_ORIGINS (--cors-origins)";
        if list.trim() == "*" {
            return Ok(Cors::Any);
        }
        let mut origins = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let origin = origin(entry).ok_or_else(|| {
                format!("{NAME}: {entry:?} is not `*` or an origin such as https://app.example.com (scheme://host[:port], no path)")
            })?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(Cors::Only(origins))
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, when it may read.
    fn allow(&self, origin: Option<&str>) -> Option<Cow<'static, str>> {
        match (self, origin) {
            (Cors::Any, _) => Some(Cow::Borrowed("*")),
            (Cors::Only(list), Some(origin)) => list
                .iter()
                .find(|o| o.eq_ignore_ascii_case(origin))
                .map(|o| Cow::Owned(o.clone())),
            (Cors::Only(_), None) => None,
        }
    }

    /// An answer of a route open to pages, with the headers that let an allowed page read it.
    pub fn answer(&self, origin: Option<&str>, mut response: Response) -> Response {
        if let Some(allowed) = self.allow(origin) {
            response = response.with_header("Access-Control-Allow-Origin", allowed);
        }
        if matches!(self, Cors::Only(_)) {
            response = response.with_header("Vary", "Origin");
        }
        response
    }

    /// The answer to a preflight (`OPTIONS`) on a route serving `methods` and taking `headers`
    /// from pages: 204, and for an allowed origin what it may send and for how long the answer
    /// holds. A page of another origin gets no `Access-Control-Allow-*`, so its browser sends
    /// nothing more.
    pub fn preflight(
        &self,
        origin: Option<&str>,
        methods: &'static [&'static str],
        headers: &'static [&'static str],
    ) -> Response {
        let mut response = Response::text(204, crate::http::JSON, String::new());
        if self.allow(origin).is_some() {
            response = response
                .with_header("Access-Control-Allow-Methods", methods.join(", "))
                .with_header("Access-Control-Allow-Headers", headers.join(", "))
                .with_header("Access-Control-Max-Age", MAX_AGE_SECS);
        }
        self.answer(origin, response)
    }
}

/// An origin as a browser serializes it in `Origin`, from the operator's spelling: http or
/// https, a host, a port only when it is not the scheme's default; no user, path, query or
/// fragment (a trailing `/` is forgiven).
fn origin(entry: &str) -> Option<String> {
    let bare = entry.strip_suffix('/').unwrap_or(entry);
    if !bare.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') || bare.contains(['?', '#', '@']) {
        return None;
    }
    let uri: http::Uri = bare.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    if !uri.path().is_empty() && uri.path() != "/" {
        return None;
    }
    let authority = uri.authority()?;
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some(match authority.port_u16() {
        Some(port) if port != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_read_as_browsers_send_them() {
        assert_eq!(Cors::parse("*"), Ok(Cors::Any));
        assert_eq!(
            Cors::parse(" https://App.Example.com/ , http://localhost:3000,https://x.test:443,")
                .unwrap(),
            Cors::Only(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into(),
                "https://x.test".into(),
            ])
        );
        assert_eq!(Cors::parse(""), Ok(Cors::Only(vec![])));
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x",
            "https://u@app.example.com",
            "ftp://app.example.com",
            "null",
            "*,https://a.test",
            "https://",
        ] {
            let e = Cors::parse(bad).unwrap_err();
            assert!(
                e.contains("OAUTH_RELAY_CORS_ORIGINS") && e.contains("--cors-origins"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn any_origin_reads_without_vary() {
        let r = Cors::Any.answer(None, Response::text(200, crate::http::JSON, "{}".into()));
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
        assert_eq!(r.header("Vary"), None);
    }

    #[test]
    fn a_list_names_the_origin_that_asked_and_only_a_listed_one() {
        let cors = Cors::parse("https://app.example.com").unwrap();
        let ok = cors.preflight(
            Some("https://app.example.com"),
            &["GET"],
            &["Authorization"],
        );
        assert_eq!(ok.status, 204);
        assert_eq!(
            ok.header("Access-Control-Allow-Origin"),
            Some("https://app.example.com")
        );
        assert_eq!(ok.header("Access-Control-Allow-Methods"), Some("GET"));
        assert_eq!(
            ok.header("Access-Control-Allow-Headers"),
            Some("Authorization")
        );
        assert_eq!(ok.header("Access-Control-Max-Age"), Some(MAX_AGE_SECS));
        assert_eq!(ok.header("Vary"), Some("Origin"));
        for other in [Some("https://evil.example"), Some("null"), None] {
            let no = cors.preflight(other, &["GET"], &["Authorization"]);
            assert_eq!(no.status, 204);
            for name in [
                "Access-Control-Allow-Origin",
                "Access-Control-Allow-Methods",
                "Access-Control-Allow-Headers",
            ] {
                assert_eq!(no.header(name), None, "{other:?}");
            }
            assert_eq!(no.header("Vary"), Some("Origin"));
        }
    }
}
