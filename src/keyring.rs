//! Secrets at rest in a shared store: AEAD (AES-256-GCM, ring) with key ids so an operator can
//! rotate keys, and keyed hashes for key names so that reading the store alone yields no usable
//! state, handle or link id.
//!
//! `OAUTH_RELAY_ENCRYPTION_KEY` holds `KID:BASE64` entries separated by commas (a bare BASE64 is
//! the key `0`). The first key encrypts; every listed key decrypts. Key *names* come from the
//! entry with the reserved id `names` when there is one (it never encrypts), else from the first
//! key. Before a first rotation, add `names:<the current key>`: names then never change, and the
//! encryption keys rotate in three roll-outs: `old,new` everywhere, then `new,old`, then, once
//! the TTL has passed, `new` alone (deploy/overlays/redis/README.md).

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;

pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
    names: hmac::Key,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keyring {{ key ids: {ids:?} }}")
    }
}

impl Keyring {
    /// Parses `OAUTH_RELAY_ENCRYPTION_KEY`. Errors name the variable and never echo key material.
    pub fn parse(spec: &str) -> Result<Keyring, String> {
        const VAR: &str = "OAUTH_RELAY_ENCRYPTION_KEY";
        let mut keys = Vec::new();
        let mut names_raw: Option<Vec<u8>> = None;
        let mut first_raw: Option<Vec<u8>> = None;
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, b64) = entry.split_once(':').unwrap_or(("0", entry));
            if id.is_empty()
                || id.len() > 32
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "{VAR}: key ids must be 1-32 letters, digits, '-', '_' or '.'"
                ));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(format!("{VAR}: key id {id} is listed twice"));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| format!("{VAR}: key {id} is not valid base64"))?;
            if raw.len() != 32 {
                return Err(format!(
                    "{VAR}: key {id} must be 32 bytes (it is {})",
                    raw.len()
                ));
            }
            if id == "names" {
                names_raw = Some(raw);
                continue;
            }
            first_raw.get_or_insert_with(|| raw.clone());
            let key = UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| format!("{VAR}: key {id} is unusable"))?;
            keys.push((id.to_string(), LessSafeKey::new(key)));
        }
        let Some(first_raw) = first_raw else {
            return Err(format!("{VAR} holds no encryption key"));
        };
        let names_raw = names_raw.unwrap_or(first_raw);
        let names_key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &names_raw),
            b"oauth-relay key names v1",
        );
        Ok(Keyring {
            keys,
            names: hmac::Key::new(hmac::HMAC_SHA256, names_key.as_ref()),
        })
    }

    /// `kid_len | kid | nonce | ciphertext+tag`; `context` (the store key) is authenticated, so a
    /// value copied under another key does not decrypt.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the system random source failed");
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut body,
        )
        .expect("AES-GCM sealing cannot fail for these sizes");
        let mut out = Vec::with_capacity(1 + id.len() + NONCE_LEN + body.len());
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }

    /// `None` for anything not sealed by one of our keys under this `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let id_len = *sealed.first()? as usize;
        let id = std::str::from_utf8(sealed.get(1..1 + id_len)?).ok()?;
        let nonce = sealed.get(1 + id_len..1 + id_len + NONCE_LEN)?;
        let mut body = sealed.get(1 + id_len + NONCE_LEN..)?.to_vec();
        let (_, key) = self.keys.iter().find(|(k, _)| k == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = key
            .open_in_place(nonce, Aad::from(context), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }

    /// A keyed hash of an identifier, for store key names: 128 bits in hex.
    pub fn name(&self, kind: &str, id: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.names);
        ctx.update(kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(id.as_bytes());
        crate::secret::hex(&ctx.sign().as_ref()[..16])
    }

    /// A keyed fingerprint (for comparing callbacks without storing them in the clear).
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&self.names, data).as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    #[test]
    fn seal_open_and_rotation() {
        let old = Keyring::parse(&format!("old:{}", key(1))).unwrap();
        let both = Keyring::parse(&format!("new:{},old:{}", key(2), key(1))).unwrap();
        let sealed_old = old.seal(b"k1", b"code-123");
        assert_eq!(both.open(b"k1", &sealed_old).unwrap(), b"code-123");
        let sealed_new = both.seal(b"k1", b"tok");
        assert!(
            old.open(b"k1", &sealed_new).is_none(),
            "old keyring read a new key's value"
        );
        assert!(
            both.open(b"k2", &sealed_new).is_none(),
            "value moved under another key opened"
        );
        assert!(!String::from_utf8_lossy(&sealed_new).contains("tok"));
        // Names come from the first key unless a `names` entry pins them.
        let pinned = format!("names:{},new:{},old:{}", key(1), key(2), key(1));
        let pinned = Keyring::parse(&pinned).unwrap();
        assert_eq!(old.name("cb", "state-1"), pinned.name("cb", "state-1"));
        assert_ne!(old.name("cb", "state-1"), both.name("cb", "state-1"));
        // The `names` entry never encrypts: `new` does.
        assert!(old.open(b"k1", &pinned.seal(b"k1", b"x")).is_none());
        assert_eq!(pinned.open(b"k1", &sealed_old).unwrap(), b"code-123");
        assert_ne!(old.name("cb", "state-1"), old.name("cb", "state-2"));
        assert!(!old.name("cb", "state-1").contains("state"));
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        for spec in [
            &format!("names:{}", key(1)),
            "",
            "k:notbase64!",
            &format!(
                "k:{}",
                base64::engine::general_purpose::STANDARD.encode([0u8; 16])
            ),
            &format!("a:{},a:{}", key(1), key(2)),
        ] {
            let err = Keyring::parse(spec).unwrap_err();
            assert!(err.contains("OAUTH_RELAY_ENCRYPTION_KEY"), "{err}");
        }
        assert!(Keyring::parse(&key(7)).is_ok());
        assert!(!format!("{:?}", Keyring::parse(&key(7)).unwrap()).contains(&key(7)));
    }
}
