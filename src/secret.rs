//! Values that must never reach a log line or a page: the `Secret` newtype, constant-time
//! comparison, retrieval-secret hashes, and the short hashes under which states appear in logs.

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

/// An authorization code, token or bearer secret. `Debug` and `Display` print `[redacted]`,
/// so a stray `{:?}` cannot leak it; `expose()` is the one door, and greps well in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in constant time. Both sides are hashed first so that not even the length of
    /// the expected secret leaks through timing.
    pub fn matches(&self, candidate: &str) -> bool {
        let a = digest(&SHA256, self.0.as_bytes());
        let b = digest(&SHA256, candidate.as_bytes());
        a.as_ref().ct_eq(b.as_ref()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// SHA-256 of a client's retrieval secret: what a state registered with `retrieval_hash` keeps,
/// and what a retrieval presenting `X-Retrieval-Secret` is turned into at once. Only the hash
/// is ever held, so the store never has the secret; comparison is constant-time.
#[derive(Clone, PartialEq, Eq)]
pub struct RetrievalHash([u8; 32]);

impl RetrievalHash {
    /// The hash of a presented secret.
    pub fn of_secret(secret: &str) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, secret.as_bytes()).as_ref());
        RetrievalHash(out)
    }

    /// `base64url(SHA-256(secret))` without padding (43 characters), as a client registers it.
    pub fn parse(encoded: &str) -> Option<Self> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()?;
        Some(RetrievalHash(bytes.try_into().ok()?))
    }

    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Compares in constant time.
    pub fn matches(&self, other: &RetrievalHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for RetrievalHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetrievalHash([redacted])")
    }
}

/// SHA-256 of the value of a browser-binding cookie (`broker/binding.rs`): all a broker session
/// keeps of the browsers that opened its link, so the store never holds a cookie a callback
/// could present. Comparison is constant-time.
#[derive(Clone, PartialEq, Eq)]
pub struct BindingHash([u8; 32]);

impl BindingHash {
    pub fn of_value(value: &str) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, value.as_bytes()).as_ref());
        BindingHash(out)
    }

    /// Compares in constant time.
    pub fn matches(&self, other: &BindingHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for BindingHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindingHash([redacted])")
    }
}

/// The first 6 bytes of SHA-256, in hex: enough to correlate log lines about one state,
/// useless for reconstructing a random state or guessing it.
pub fn short_hash(value: &str) -> String {
    hex(&digest(&SHA256, value.as_bytes()).as_ref()[..6])
}

/// SHA-256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ.
pub fn fingerprint(parts: &[Option<&str>]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&SHA256);
    for part in parts {
        match part {
            None => ctx.update(&[0]),
            Some(p) => {
                ctx.update(&[1]);
                ctx.update(&(p.len() as u64).to_be_bytes());
                ctx.update(p.as_bytes());
            }
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Lower-case hex, built in one allocation: store key names are hex (`Keyring::name`), several
/// per request on a shared store, and a `format!` per byte was a measurable share of the
/// relay's CPU there (bench/redis_share.py).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("c0de-value");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(!format!("{:?}", Some(&s)).contains("c0de"));
    }

    #[test]
    fn matches_only_the_exact_value() {
        let s = Secret::new("token-123");
        assert!(s.matches("token-123"));
        assert!(!s.matches("token-12"));
        assert!(!s.matches("token-1234"));
        assert!(!s.matches(""));
    }

    #[test]
    fn retrieval_hashes_are_base64url_sha256() {
        // echo -n secret | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '='
        let h = RetrievalHash::parse("K7gNU3sdo-OL0wNhqoVWhr3g6s1xYv72ol_pe_Unols").unwrap();
        assert!(h.matches(&RetrievalHash::of_secret("secret")));
        assert!(!h.matches(&RetrievalHash::of_secret("secret ")));
        assert_eq!(h.encode(), "K7gNU3sdo-OL0wNhqoVWhr3g6s1xYv72ol_pe_Unols");
        for bad in [
            "",
            "K7gNU3sdo-OL0wNhqoVWhr3g6s1xYv72ol_pe_Unol",
            "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols",
            "K7gNU3sdo-OL0wNhqoVWhr3g6s1xYv72ol_pe_Unols=",
            "c2VjcmV0",
        ] {
            assert!(RetrievalHash::parse(bad).is_none(), "{bad:?}");
        }
        assert!(!format!("{h:?}").contains("K7g"));
    }

    #[test]
    fn short_hash_is_stable_and_short() {
        assert_eq!(short_hash("st-1"), short_hash("st-1"));
        assert_ne!(short_hash("st-1"), short_hash("st-2"));
        assert_eq!(short_hash("x").len(), 12);
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(
            fingerprint(&[Some("ab"), Some("c")]),
            fingerprint(&[Some("a"), Some("bc")])
        );
        assert_ne!(fingerprint(&[None]), fingerprint(&[Some("")]));
    }
}
