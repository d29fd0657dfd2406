//! The browser binding: opening a login link gives that browser a short-lived cookie, and the
//! provider's callback finishes a sign-in only for a browser that presents one its session
//! knows. The OAuth state travels in URLs (the link's redirect, which a preview bot's `HEAD`
//! also sees, the provider's authorize URL, its logs, the browser's history), so without the
//! cookie anyone who saw the state could end the sign-in with a forged callback
//! (`error=access_denied`) before the person signs in.
//!
//! One cookie per session, named after a hash of its OAuth state, so two links open in one
//! browser do not overwrite each other's. `__Host-` keeps it to this host exactly (`Secure`,
//! `Path=/`, no `Domain`: no sibling subdomain can plant or overwrite it), `HttpOnly` from
//! scripts; `SameSite=Lax` still sends it on the provider's top-level GET redirect back to us.
//! It lives as long as the session and is cleared once the callback has taken the state. The
//! session keeps only a hash of the value (`BindingHash`). Browsers treat `http://127.0.0.1`
//! and `localhost` as secure, so tests on loopback keep `Secure`.

use crate::http::HttpRequest;
use crate::secret::{short_hash, BindingHash};
use std::time::Duration;

const PREFIX: &str = "__Host-oauth-relay-";
const ATTRIBUTES: &str = "Path=/; Secure; HttpOnly; SameSite=Lax";

/// The cookie's name for the session whose OAuth state this is.
fn name(oauth_state: &str) -> String {
    format!("{PREFIX}{}", short_hash(oauth_state))
}

/// A new binding for a browser opening the link: the `Set-Cookie` value to send it (living
/// `max_age`, at least a second) and the hash the session keeps.
pub fn issue(oauth_state: &str, max_age: Duration) -> (String, BindingHash) {
    let value = crate::random::id(16);
    let hash = BindingHash::of_value(&value);
    let secs = max_age.as_secs().max(1);
    (
        format!(
            "{}={value}; Max-Age={secs}; {ATTRIBUTES}",
            name(oauth_state)
        ),
        hash,
    )
}

/// The `Set-Cookie` value that removes the session's cookie once its state has been taken.
pub fn clear(oauth_state: &str) -> String {
    format!("{}=; Max-Age=0; {ATTRIBUTES}", name(oauth_state))
}

/// The hash of the binding cookie this request presents for the session of `oauth_state`, if
/// any (the first, should a client send several).
pub fn presented(req: &HttpRequest, oauth_state: &str) -> Option<BindingHash> {
    let name = name(oauth_state);
    req.headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| BindingHash::of_value(value.trim_matches('"')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(set_cookie: &str) -> &str {
        set_cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
    }

    #[test]
    fn the_cookie_is_host_only_secure_http_only_and_lax() {
        let (set, hash) = issue("state-1", Duration::from_secs(599));
        assert!(set.starts_with(&format!("__Host-oauth-relay-{}=", short_hash("state-1"))));
        assert!(set.ends_with("; Max-Age=599; Path=/; Secure; HttpOnly; SameSite=Lax"));
        assert!(!set.contains("Domain"));
        assert_eq!(value_of(&set).len(), 22);
        assert_eq!(BindingHash::of_value(value_of(&set)), hash);
        let (again, other) = issue("state-1", Duration::ZERO);
        assert!(again.contains("Max-Age=1;"));
        assert_ne!(value_of(&again), value_of(&set));
        assert_ne!(other, hash);
        let cleared = clear("state-1");
        assert!(cleared.starts_with(&format!("__Host-oauth-relay-{}=;", short_hash("state-1"))));
        assert!(cleared.contains("Max-Age=0"));
    }

    #[test]
    fn each_session_reads_its_own_cookie() {
        let (a, hash_a) = issue("state-a", Duration::from_secs(60));
        let (b, hash_b) = issue("state-b", Duration::from_secs(60));
        let pair = |s: &str| s.split(';').next().unwrap().to_string();
        let req = HttpRequest::new("GET", "/m365/callback?state=state-a")
            .with_header("Cookie", &format!("other=1; {}", pair(&b)))
            .with_header("Cookie", &format!("{} ; x=y", pair(&a)));
        assert_eq!(presented(&req, "state-a"), Some(hash_a));
        assert_eq!(presented(&req, "state-b"), Some(hash_b));
        assert_eq!(presented(&req, "state-c"), None);
        let bare = HttpRequest::new("GET", "/m365/callback?state=state-a");
        assert_eq!(presented(&bare, "state-a"), None);
    }
}
