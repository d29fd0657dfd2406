//! Random identifiers: link ids, OAuth states, retrieval handles, nonces, verifiers, retrieval
//! secrets, event ids, connection ids. One helper, so each is drawn from the system's random
//! source and spelled the same way.

use base64::Engine;

/// `bytes` bytes from the system's random source, base64url without padding (16 bytes: 128 bits
/// in 22 characters, URL-, header- and shell-safe as they are).
pub fn id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the system random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_base64url_of_their_bytes_and_differ() {
        let a = id(16);
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, id(16));
        assert_eq!(id(32).len(), 43);
    }
}
