//! Values that must never reach a log line or a page: the `Secret` newtype, constant-time
//! comparison, and the short hashes under which states appear in logs.

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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
