//! Sealed hand-offs: an answer encrypted to the caller's own public key, so that the store (and
//! whoever holds its key) keeps only ciphertext and the answer crosses proxies and logs
//! unreadable. The form is a JWE in compact serialization (RFC 7516), `ECDH-ES` key agreement
//! with `A256GCM` content encryption (RFC 7518), to a P-256 or X25519 key (RFC 8037): what `jose`,
//! `jwcrypto`, `joserfc` and `go-jose` open as they are. Its plaintext is a JWT claims set
//! (RFC 7519): the answer plus `iss`, `aud`, `iat`, `exp` and a unique `jti`, so that the opener
//! can refuse an answer meant for another session, a stale one, or one it has seen before.
//!
//! Here: checking a caller's public JWK ([`SealKey::from_jwk`]), sealing ([`SealKey::seal_answer`]),
//! and for the CLI, key pairs ([`PrivateKey`]), opening ([`open`]) and the opener's claim checks
//! ([`check_claims`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::OsRng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde_json::{json, Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The key management algorithm: the ECDH-ES output is the content key (one recipient needs no
/// key wrap).
pub const ALG: &str = "ECDH-ES";
pub const ENC: &str = "A256GCM";
/// Explicit typing (RFC 8725, section 3.11), so that a sealed answer is not taken for another
/// kind of encrypted JWT the caller accepts.
pub const TYP: &str = "oauth-relay-answer+jwt";
/// How long after the broker stops handing an answer out it may still be opened: the trip to the
/// caller, and clocks that disagree a little.
pub const OPEN_GRACE: Duration = Duration::from_secs(60);

const TAG_LEN: usize = 16;
const KID_MAX_CHARS: usize = 256;

/// What `d`-like members a JWK of any type keeps its secret in (RFC 7518 section 6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    X25519,
}

impl Curve {
    fn kty(self) -> &'static str {
        match self {
            Curve::P256 => "EC",
            Curve::X25519 => "OKP",
        }
    }

    fn crv(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::X25519 => "X25519",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Public {
    P256(p256::PublicKey),
    X25519(x25519_dalek::PublicKey),
}

/// A caller's public key, checked: what answers are sealed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealKey {
    public: Public,
    kid: Option<String>,
}

/// A 32-byte base64url member of a JWK.
fn member32(jwk: &Map<String, Value>, name: &str) -> Option<[u8; 32]> {
    B64.decode(jwk.get(name)?.as_str()?).ok()?.try_into().ok()
}

/// The public part of a JWK (public or private): type, curve, point, and the members that say
/// what the key is for. Messages name the member at fault and never repeat a value.
fn parse_public(jwk: &Map<String, Value>) -> Result<SealKey, &'static str> {
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "enc" => {}
        Some(_) => {
            return Err("seal_to: use must be \"enc\" (or absent): this key is not for encryption")
        }
    }
    match jwk.get("key_ops") {
        None => {}
        // What WebCrypto exports for an ECDH public key (its usages are all the private key's).
        Some(Value::Array(ops)) if ops.is_empty() => {}
        Some(Value::Array(ops))
            if ops.iter().any(|op| {
                matches!(
                    op.as_str(),
                    Some("deriveKey" | "deriveBits" | "wrapKey" | "encrypt")
                )
            }) => {}
        Some(_) => return Err(
            "seal_to: key_ops must allow deriveKey, deriveBits, wrapKey or encrypt (or be absent)",
        ),
    }
    match jwk.get("alg") {
        None => {}
        Some(Value::String(a)) if a == ALG => {}
        Some(_) => return Err(
            "seal_to: alg must be ECDH-ES (or absent): answers are sealed with ECDH-ES and A256GCM",
        ),
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k))
            if !k.is_empty()
                && k.chars().count() <= KID_MAX_CHARS
                && !k.chars().any(char::is_control) =>
        {
            Some(k.clone())
        }
        Some(_) => return Err("seal_to: kid must be a string of 1 to 256 printable characters"),
    };
    let crv = jwk.get("crv").and_then(Value::as_str);
    let public = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") if crv == Some("P-256") => {
            let (Some(x), Some(y)) = (member32(jwk, "x"), member32(jwk, "y")) else {
                return Err(
                    "seal_to: x and y must be the base64url coordinates of a P-256 point (32 bytes each)",
                );
            };
            let mut sec1 = [4u8; 65];
            sec1[1..33].copy_from_slice(&x);
            sec1[33..].copy_from_slice(&y);
            Public::P256(
                p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| "seal_to: x and y are not a point on P-256")?,
            )
        }
        Some("EC") => return Err("seal_to: EC keys must be on P-256 (crv \"P-256\")"),
        Some("OKP") if crv == Some("X25519") => {
            let Some(x) = member32(jwk, "x") else {
                return Err("seal_to: x must be the base64url X25519 public key (32 bytes)");
            };
            let public = x25519_dalek::PublicKey::from(x);
            // A low-order point makes every shared secret the same: nothing sealed to it is secret.
            let probe = x25519_dalek::EphemeralSecret::random_from_rng(OsRng);
            if !probe.diffie_hellman(&public).was_contributory() {
                return Err("seal_to: x is a low-order X25519 point, which nothing can be sealed to");
            }
            Public::X25519(public)
        }
        Some("OKP") if matches!(crv, Some("Ed25519" | "Ed448")) => {
            return Err(
                "seal_to: an Ed25519 or Ed448 key is for signatures; use an X25519 key (kty \"OKP\", crv \"X25519\")",
            )
        }
        Some("OKP") => return Err("seal_to: OKP keys must be X25519 (crv \"X25519\")"),
        Some("RSA") => {
            return Err("seal_to: RSA keys are not supported; use an EC P-256 or OKP X25519 key")
        }
        _ => return Err("seal_to: kty must be EC (with crv P-256) or OKP (with crv X25519)"),
    };
    Ok(SealKey { public, kid })
}

impl SealKey {
    /// A caller's key as it came in a request. Refused: anything that is not a public P-256 or
    /// X25519 key meant for this use; first of all a private key, whose secret is then neither
    /// read further nor repeated.
    pub fn from_jwk(jwk: &Value) -> Result<SealKey, &'static str> {
        let Some(jwk) = jwk.as_object() else {
            return Err("seal_to must be a public JWK (a JSON object)");
        };
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(
                "seal_to holds a private key (it has \"d\" or another private member): send only the public key, and make a new key pair, since this private key has left your hands",
            );
        }
        parse_public(jwk)
    }

    pub fn curve(&self) -> Curve {
        match self.public {
            Public::P256(_) => Curve::P256,
            Public::X25519(_) => Curve::X25519,
        }
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The RFC 7638 thumbprint members, in their required (lexicographic) order.
    fn required_members(&self) -> Vec<(&'static str, String)> {
        let curve = self.curve();
        let mut members = vec![
            ("crv", curve.crv().to_string()),
            ("kty", curve.kty().to_string()),
        ];
        match &self.public {
            Public::P256(p) => {
                let point = p.to_encoded_point(false);
                members.push(("x", B64.encode(point.x().expect("an uncompressed point"))));
                members.push(("y", B64.encode(point.y().expect("an uncompressed point"))));
            }
            Public::X25519(p) => members.push(("x", B64.encode(p.as_bytes()))),
        }
        members
    }

    /// The JWK thumbprint (RFC 7638, SHA-256), a stable name for the key.
    pub fn thumbprint(&self) -> String {
        let members: Map<String, Value> = self
            .required_members()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        // serde_json's map is ordered by key and writes no whitespace: the canonical form.
        let canonical = Value::Object(members).to_string();
        B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    /// The public JWK as the broker uses it (stored with the session, echoed to the caller).
    pub fn to_jwk(&self) -> Value {
        let mut jwk: Map<String, Value> = self
            .required_members()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        jwk.insert("use".into(), json!("enc"));
        jwk.insert("alg".into(), json!(ALG));
        if let Some(kid) = &self.kid {
            jwk.insert("kid".into(), json!(kid));
        }
        Value::Object(jwk)
    }

    /// `answer` with the registered claims added, sealed: `iss`, `aud` (who the answer is for:
    /// the opener compares it with what it expects), `iat`, `exp` (`lifetime` later) and a
    /// random `jti`. The answer must not hold those names itself.
    pub fn seal_answer(&self, envelope: &Envelope, answer: Map<String, Value>) -> String {
        let now = unix_now();
        let mut claims = answer;
        claims.insert("iss".into(), json!(envelope.issuer));
        claims.insert("aud".into(), json!(envelope.audience));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + envelope.lifetime.as_secs()));
        claims.insert("jti".into(), json!(crate::random::id(16)));
        let plaintext =
            serde_json::to_vec(&Value::Object(claims)).expect("a JSON value always serializes");
        self.seal(plaintext)
    }

    /// `plaintext` sealed to this key: a compact JWE (`header..iv.ciphertext.tag`; ECDH-ES has
    /// no encrypted key). A fresh ephemeral key every time, so no two seals share a content key.
    pub fn seal(&self, mut plaintext: Vec<u8>) -> String {
        let mut z = Zeroizing::new([0u8; 32]);
        let epk = match &self.public {
            Public::P256(peer) => {
                let ephemeral = p256::ecdh::EphemeralSecret::random(&mut OsRng);
                z.copy_from_slice(ephemeral.diffie_hellman(peer).raw_secret_bytes());
                SealKey {
                    public: Public::P256(ephemeral.public_key()),
                    kid: None,
                }
            }
            Public::X25519(peer) => {
                let ephemeral = x25519_dalek::EphemeralSecret::random_from_rng(OsRng);
                let public = x25519_dalek::PublicKey::from(&ephemeral);
                z.copy_from_slice(ephemeral.diffie_hellman(peer).as_bytes());
                SealKey {
                    public: Public::X25519(public),
                    kid: None,
                }
            }
        };
        let epk: Map<String, Value> = epk
            .required_members()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        let mut header = json!({ "alg": ALG, "enc": ENC, "typ": TYP, "epk": epk });
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        let protected = B64.encode(header.to_string());
        let mut cek = Zeroizing::new([0u8; 32]);
        concat_kdf(&z[..], ENC, b"", b"", &mut cek[..]);
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &cek[..]).expect("a 32-byte AES-256 key"),
        );
        let mut iv = [0u8; NONCE_LEN];
        getrandom::fill(&mut iv).expect("the system random source failed");
        // In place: once sealed, the buffer that held the plaintext holds the ciphertext.
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(protected.as_bytes()),
                &mut plaintext,
            )
            .expect("AES-GCM sealing cannot fail for these sizes");
        format!(
            "{protected}..{}.{}.{}",
            B64.encode(iv),
            B64.encode(&plaintext),
            B64.encode(tag.as_ref())
        )
    }
}

/// Who a sealed answer is for, and for how long it may be opened.
pub struct Envelope<'a> {
    /// The broker's public URL.
    pub issuer: &'a str,
    /// What the opener expects: for a sign-in, the session's handle (its `state`).
    pub audience: &'a str,
    pub lifetime: Duration,
}

/// NIST SP 800-56A Concat KDF as JWE uses it (RFC 7518 section 4.6.2): `AlgorithmID` is the
/// `enc` value for direct key agreement, `SuppPubInfo` the key length in bits.
fn concat_kdf(z: &[u8], algorithm: &str, apu: &[u8], apv: &[u8], key: &mut [u8]) {
    let mut info = Vec::with_capacity(algorithm.len() + apu.len() + apv.len() + 16);
    for part in [algorithm.as_bytes(), apu, apv] {
        info.extend_from_slice(&(part.len() as u32).to_be_bytes());
        info.extend_from_slice(part);
    }
    info.extend_from_slice(&((key.len() * 8) as u32).to_be_bytes());
    concat_kdf::derive_key_into::<sha2::Sha256>(z, &info, key)
        .expect("a non-empty secret and key of a few bytes");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

enum SecretPart {
    P256(p256::SecretKey),
    X25519(x25519_dalek::StaticSecret),
}

/// A key pair for opening sealed answers (the CLI's `keygen` and `open`; the broker never holds
/// one). `Debug` shows the curve and key id only.
pub struct PrivateKey {
    secret: SecretPart,
    kid: Option<String>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PrivateKey {{ curve: {:?}, kid: {:?} }}",
            self.public().curve(),
            self.kid
        )
    }
}

impl PrivateKey {
    /// A new key pair, named by its thumbprint.
    pub fn generate(curve: Curve) -> PrivateKey {
        let secret = match curve {
            Curve::P256 => SecretPart::P256(p256::SecretKey::random(&mut OsRng)),
            Curve::X25519 => SecretPart::X25519(x25519_dalek::StaticSecret::random_from_rng(OsRng)),
        };
        let mut key = PrivateKey { secret, kid: None };
        key.kid = Some(key.public().thumbprint());
        key
    }

    /// A private JWK (as `keygen` writes it): its `d`, and public members that must be `d`'s.
    pub fn from_jwk(jwk: &Value) -> Result<PrivateKey, String> {
        let Some(map) = jwk.as_object() else {
            return Err("the key file must hold a JWK (a JSON object)".into());
        };
        let public = parse_public(map).map_err(|e| e.replacen("seal_to", "the key", 1))?;
        let Some(d) = member32(map, "d") else {
            return Err("the key has no private part (d, 32 bytes base64url)".into());
        };
        let d = Zeroizing::new(d);
        let secret = match public.curve() {
            Curve::P256 => SecretPart::P256(
                p256::SecretKey::from_slice(&d[..])
                    .map_err(|_| "the key's d is not a P-256 private key".to_string())?,
            ),
            Curve::X25519 => SecretPart::X25519(x25519_dalek::StaticSecret::from(*d)),
        };
        let key = PrivateKey {
            secret,
            kid: public.kid.clone(),
        };
        if key.public().public != public.public {
            return Err("the key's d does not belong to its x (and y)".into());
        }
        Ok(key)
    }

    pub fn public(&self) -> SealKey {
        let public = match &self.secret {
            SecretPart::P256(s) => Public::P256(s.public_key()),
            SecretPart::X25519(s) => Public::X25519(x25519_dalek::PublicKey::from(s)),
        };
        SealKey {
            public,
            kid: self.kid.clone(),
        }
    }

    /// The private JWK, `d` included: for the key file only.
    pub fn to_jwk(&self) -> Value {
        let mut jwk = self.public().to_jwk();
        let d = match &self.secret {
            SecretPart::P256(s) => B64.encode(s.to_bytes()),
            SecretPart::X25519(s) => B64.encode(s.as_bytes()),
        };
        jwk["d"] = json!(d);
        jwk
    }

    /// The shared secret with a sender's ephemeral key; `None` for a key of another curve or a
    /// low-order point.
    fn agree(&self, epk: &SealKey) -> Option<Zeroizing<[u8; 32]>> {
        let mut z = Zeroizing::new([0u8; 32]);
        match (&self.secret, &epk.public) {
            (SecretPart::P256(s), Public::P256(p)) => {
                let shared = p256::ecdh::diffie_hellman(s.to_nonzero_scalar(), p.as_affine());
                z.copy_from_slice(shared.raw_secret_bytes());
            }
            (SecretPart::X25519(s), Public::X25519(p)) => {
                let shared = s.diffie_hellman(p);
                if !shared.was_contributory() {
                    return None;
                }
                z.copy_from_slice(shared.as_bytes());
            }
            _ => return None,
        }
        Some(z)
    }
}

/// Opens a compact JWE sealed to `key` (`ECDH-ES` with `A256GCM`, as [`SealKey::seal`] makes
/// them) and returns its claims. Fails on anything else, a wrong key, or any altered byte
/// (AES-GCM authenticates the protected header too). The claims are not checked here: see
/// [`check_claims`].
pub fn open(key: &PrivateKey, compact: &str) -> Result<Value, String> {
    let parts: Vec<&str> = compact.trim().split('.').collect();
    let [protected, encrypted_key, iv, ciphertext, tag] = parts[..] else {
        return Err("not a JWE in compact serialization (five parts separated by dots)".into());
    };
    let malformed = |what: &str| format!("not a sealed answer: {what}");
    let header: Value = B64
        .decode(protected)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .filter(Value::is_object)
        .ok_or_else(|| malformed("the protected header is not base64url JSON"))?;
    if header["alg"] != ALG || header["enc"] != ENC {
        return Err(malformed("alg must be ECDH-ES and enc A256GCM"));
    }
    if header.get("crit").is_some() || header.get("zip").is_some() {
        return Err(malformed("crit and zip are not supported"));
    }
    if header.get("typ").is_some_and(|t| t != TYP) {
        return Err(malformed("its typ is not an oauth-relay answer's"));
    }
    if !encrypted_key.is_empty() {
        return Err(malformed("ECDH-ES has no encrypted key"));
    }
    let epk = header["epk"]
        .as_object()
        .ok_or_else(|| malformed("epk is missing"))
        .and_then(|epk| parse_public(epk).map_err(|_| malformed("epk is not a usable key")))?;
    let party = |name: &str| match header.get(name) {
        None => Ok(Vec::new()),
        Some(v) => v
            .as_str()
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| malformed("apu and apv must be base64url")),
    };
    let (apu, apv) = (party("apu")?, party("apv")?);
    let iv: [u8; NONCE_LEN] = B64
        .decode(iv)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| malformed("the IV must be 12 bytes"))?;
    let mut sealed = B64
        .decode(ciphertext)
        .map_err(|_| malformed("the ciphertext is not base64url"))?;
    let tag = B64
        .decode(tag)
        .ok()
        .filter(|t| t.len() == TAG_LEN)
        .ok_or_else(|| malformed("the tag must be 16 bytes"))?;
    sealed.extend_from_slice(&tag);
    let z = key
        .agree(&epk)
        .ok_or("it was sealed to a key of another curve")?;
    let mut cek = Zeroizing::new([0u8; 32]);
    concat_kdf(&z[..], ENC, &apu, &apv, &mut cek[..]);
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek[..]).expect("32 bytes"));
    let plain = aead
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(protected.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| {
            "it does not open with this key (sealed to another key, or altered)".to_string()
        })?;
    let claims: Value =
        serde_json::from_slice(plain).map_err(|_| malformed("the plaintext is not JSON"))?;
    sealed.iter_mut().for_each(|b| *b = 0);
    if !claims.is_object() {
        return Err(malformed("the plaintext is not a claims set"));
    }
    Ok(claims)
}

/// What an opener checks before using what it opened: the answer is not stale (`exp`, at
/// `now`), and it is for what the opener expects (`aud`, when `audience` is given: the `state`
/// of the session it created). Refusing a `jti` seen before is left to openers that keep them.
pub fn check_claims(
    claims: &Value,
    audience: Option<&str>,
    now: SystemTime,
) -> Result<(), &'static str> {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    match claims["exp"].as_u64() {
        Some(exp) if now < exp => {}
        Some(_) => return Err("the sealed answer has expired (exp)"),
        None => return Err("the sealed answer has no exp"),
    }
    if let Some(expected) = audience {
        let matches = match &claims["aud"] {
            Value::String(aud) => aud == expected,
            Value::Array(auds) => auds.iter().any(|a| a == expected),
            _ => false,
        };
        if !matches {
            return Err("the sealed answer is for another audience (aud)");
        }
    }
    if !claims["jti"].is_string() {
        return Err("the sealed answer has no jti");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p256_key() -> PrivateKey {
        PrivateKey::generate(Curve::P256)
    }

    fn envelope() -> Envelope<'static> {
        Envelope {
            issuer: "https://relay.example.com",
            audience: "handle-1",
            lifetime: Duration::from_secs(660),
        }
    }

    fn answer() -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("access_token".into(), json!("AT-secret-123"));
        m.insert("refresh_token".into(), json!("RT-secret-456"));
        m.insert("provider".into(), json!("m365"));
        m
    }

    fn header_of(jwe: &str) -> Value {
        serde_json::from_slice(&B64.decode(jwe.split('.').next().unwrap()).unwrap()).unwrap()
    }

    /// RFC 7518 Appendix C: Bob's static P-256 key and Alice's ephemeral one give the documented
    /// shared secret, and the Concat KDF (A128GCM, apu "Alice", apv "Bob") the documented key.
    #[test]
    fn the_rfc_7518_ecdh_es_example_derives_its_key() {
        let bob = PrivateKey::from_jwk(&json!({
            "kty": "EC", "crv": "P-256",
            "x": "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ",
            "y": "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck",
            "d": "VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw"
        }))
        .unwrap();
        let alice = SealKey::from_jwk(&json!({
            "kty": "EC", "crv": "P-256",
            "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps"
        }))
        .unwrap();
        let z = bob.agree(&alice).unwrap();
        assert_eq!(
            z[..],
            [
                158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
                110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196
            ]
        );
        let mut key = [0u8; 16];
        concat_kdf(&z[..], "A128GCM", b"Alice", b"Bob", &mut key);
        assert_eq!(B64.encode(key), "VqqN6vgjbSBcIijNcacQGg");
    }

    /// RFC 8037 Appendix A.6 (the RFC 7748 keys): X25519 between Bob's static key and the
    /// ephemeral key gives the documented shared secret.
    #[test]
    fn the_rfc_8037_x25519_example_agrees() {
        let bob_d = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
        let d: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&bob_d[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let bob = PrivateKey::from_jwk(&json!({
            "kty": "OKP", "crv": "X25519",
            "x": "3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08",
            "d": B64.encode(d),
        }))
        .unwrap();
        let ephemeral = SealKey::from_jwk(&json!({
            "kty": "OKP", "crv": "X25519", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"
        }))
        .unwrap();
        let z = bob.agree(&ephemeral).unwrap();
        assert_eq!(
            crate::secret::hex(&z[..]),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    #[test]
    fn answers_seal_and_open_on_both_curves() {
        for curve in [Curve::P256, Curve::X25519] {
            let key = PrivateKey::generate(curve);
            let public = SealKey::from_jwk(&key.public().to_jwk()).unwrap();
            let jwe = public.seal_answer(&envelope(), answer());
            assert!(!jwe.contains("AT-secret"));
            let parts: Vec<&str> = jwe.split('.').collect();
            assert_eq!(parts.len(), 5);
            assert_eq!(parts[1], "", "ECDH-ES has no encrypted key");
            let header = header_of(&jwe);
            assert_eq!(
                (&header["alg"], &header["enc"], &header["typ"]),
                (&json!("ECDH-ES"), &json!("A256GCM"), &json!(TYP))
            );
            assert_eq!(header["kid"], json!(key.public().thumbprint()));
            assert_eq!(header["epk"]["crv"], curve.crv());
            assert_eq!(header["epk"]["kty"], curve.kty());
            let claims = open(&key, &jwe).unwrap();
            assert_eq!(claims["access_token"], "AT-secret-123");
            assert_eq!(claims["iss"], "https://relay.example.com");
            assert_eq!(claims["aud"], "handle-1");
            let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64());
            assert_eq!(exp, Some(iat + 660));
            check_claims(&claims, Some("handle-1"), SystemTime::now()).unwrap();
            // Every seal is its own: another ephemeral key, IV and jti.
            let again = public.seal_answer(&envelope(), answer());
            assert_ne!(header_of(&again)["epk"], header["epk"]);
            assert_ne!(open(&key, &again).unwrap()["jti"], claims["jti"]);
        }
    }

    #[test]
    fn an_altered_answer_or_another_key_does_not_open() {
        let key = p256_key();
        let jwe = key.public().seal_answer(&envelope(), answer());
        for part in [0, 2, 3, 4] {
            let mut parts: Vec<String> = jwe.split('.').map(String::from).collect();
            let mut bytes = B64.decode(&parts[part]).unwrap();
            let at = if part == 0 { bytes.len() - 5 } else { 0 };
            bytes[at] ^= 1;
            parts[part] = B64.encode(bytes);
            assert!(open(&key, &parts.join(".")).is_err(), "part {part}");
        }
        // The protected header is the AEAD's associated data: a kid changed there is refused.
        let mut header = header_of(&jwe);
        header["kid"] = json!("another-kid");
        let rest = jwe.split_once('.').unwrap().1;
        let forged = format!("{}.{rest}", B64.encode(header.to_string()));
        assert!(open(&key, &forged)
            .unwrap_err()
            .contains("does not open with this key"));
        assert!(open(&p256_key(), &jwe)
            .unwrap_err()
            .contains("does not open with this key"));
        let x = PrivateKey::generate(Curve::X25519);
        assert!(open(&x, &jwe).unwrap_err().contains("another curve"));
        assert!(open(&key, "a.b.c").is_err());
        assert!(open(&key, &jwe.replacen("..", ".AAAA.", 1)).is_err());
    }

    #[test]
    fn the_opener_refuses_stale_and_foreign_answers() {
        let key = PrivateKey::generate(Curve::X25519);
        let claims = open(&key, &key.public().seal_answer(&envelope(), answer())).unwrap();
        let later = SystemTime::now() + Duration::from_secs(661);
        assert_eq!(
            check_claims(&claims, None, later),
            Err("the sealed answer has expired (exp)")
        );
        assert_eq!(
            check_claims(&claims, Some("handle-2"), SystemTime::now()),
            Err("the sealed answer is for another audience (aud)")
        );
        assert!(check_claims(&json!({ "aud": "handle-1" }), None, SystemTime::now()).is_err());
    }

    #[test]
    fn unusable_keys_are_refused_with_what_is_wrong() {
        let good = p256_key().public().to_jwk();
        let x25519 = PrivateKey::generate(Curve::X25519).public().to_jwk();
        let with = |base: &Value, k: &str, v: Value| {
            let mut j = base.clone();
            j[k] = v;
            j
        };
        let without = |base: &Value, k: &str| {
            let mut j = base.clone();
            j.as_object_mut().unwrap().remove(k);
            j
        };
        let private = p256_key().to_jwk();
        let secret_d = private["d"].as_str().unwrap().to_string();
        // The largest x and y are no point on P-256 (they exceed the field).
        let off_curve = with(
            &with(&good, "x", json!(B64.encode([0xffu8; 32]))),
            "y",
            json!(B64.encode([0xffu8; 32])),
        );
        let cases = [
            (json!("a string"), "a public JWK (a JSON object)"),
            (private.clone(), "holds a private key"),
            (
                json!({ "kty": "RSA", "n": "AQAB", "e": "AQAB" }),
                "RSA keys are not supported",
            ),
            (
                json!({ "kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB" }),
                "holds a private key",
            ),
            (
                json!({ "kty": "oct", "k": "c2VjcmV0" }),
                "holds a private key",
            ),
            (with(&good, "crv", json!("P-384")), "must be on P-256"),
            (
                with(&x25519, "crv", json!("Ed25519")),
                "is for signatures; use an X25519 key",
            ),
            (with(&x25519, "crv", json!("X448")), "must be X25519"),
            (without(&good, "kty"), "kty must be EC"),
            (without(&good, "y"), "x and y must be the base64url"),
            (with(&good, "x", json!("not base64!")), "x and y must be"),
            (
                with(&good, "x", json!(B64.encode([1u8; 31]))),
                "32 bytes each",
            ),
            (off_curve, "not a point on P-256"),
            (
                with(&x25519, "x", json!(B64.encode([0u8; 32]))),
                "low-order X25519 point",
            ),
            (
                with(&x25519, "x", json!(7)),
                "x must be the base64url X25519",
            ),
            (with(&good, "use", json!("sig")), "use must be \"enc\""),
            (
                with(&good, "key_ops", json!(["verify"])),
                "key_ops must allow",
            ),
            (
                with(&good, "key_ops", json!("deriveKey")),
                "key_ops must allow",
            ),
            (
                with(&good, "alg", json!("ECDH-ES+A256KW")),
                "alg must be ECDH-ES",
            ),
            (with(&good, "kid", json!(42)), "kid must be a string"),
            (with(&good, "kid", json!("a\nb")), "kid must be a string"),
            (
                with(&good, "kid", json!("k".repeat(257))),
                "kid must be a string",
            ),
        ];
        for (jwk, expected) in cases {
            let err = SealKey::from_jwk(&jwk).unwrap_err();
            assert!(err.contains(expected), "{jwk}: {err}");
            assert!(!err.contains(&secret_d));
        }
        // What stock libraries export is accepted: bare members, WebCrypto's empty key_ops,
        // key_ops naming a key agreement, other members (`ext`) ignored.
        for jwk in [
            good.clone(),
            without(&without(&without(&good, "use"), "alg"), "kid"),
            with(&good, "key_ops", json!([])),
            with(&x25519, "key_ops", json!(["deriveBits"])),
            with(&good, "ext", json!(true)),
        ] {
            assert!(SealKey::from_jwk(&jwk).is_ok(), "{jwk}");
        }
    }

    #[test]
    fn private_keys_round_trip_and_never_show_their_secret() {
        for curve in [Curve::P256, Curve::X25519] {
            let key = PrivateKey::generate(curve);
            let jwk = key.to_jwk();
            let d = jwk["d"].as_str().unwrap().to_string();
            let back = PrivateKey::from_jwk(&jwk).unwrap();
            assert_eq!(back.public(), key.public());
            assert_eq!(key.public().kid(), Some(key.public().thumbprint().as_str()));
            assert!(!format!("{key:?}").contains(&d));
            assert!(key.public().to_jwk().get("d").is_none());
            // A d that is another key's.
            let other = PrivateKey::generate(curve).to_jwk();
            let mismatched = json!({ "kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"],
                                     "y": jwk.get("y"), "d": other["d"] });
            let mut mismatched = mismatched;
            if curve == Curve::X25519 {
                mismatched.as_object_mut().unwrap().remove("y");
            }
            assert!(PrivateKey::from_jwk(&mismatched)
                .unwrap_err()
                .contains("does not belong"));
            assert!(PrivateKey::from_jwk(&key.public().to_jwk())
                .unwrap_err()
                .contains("no private part"));
        }
    }

    #[test]
    fn thumbprints_are_rfc_7638() {
        // RFC 7638's canonical form for an EC key, hashed by hand.
        let key = SealKey::from_jwk(&json!({
            "kty": "EC", "crv": "P-256",
            "x": "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "y": "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps", "kid": "ignored"
        }))
        .unwrap();
        let canonical = r#"{"crv":"P-256","kty":"EC","x":"gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0","y":"SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps"}"#;
        let expected = B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ));
        assert_eq!(key.thumbprint(), expected);
        assert_eq!(key.thumbprint().len(), 43);
    }
}
