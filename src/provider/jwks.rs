//! OpenID Connect id_token verification against the provider's own JWKS (issue 8): the
//! signature with a key from the provider's `jwks_uri`, then `iss`, `aud`/`azp`, `exp`, `iat`
//! and `nonce` as OpenID Connect Core 3.1.3.7 says. The cryptography and JWK decoding are
//! `jsonwebtoken`'s (RustCrypto backend); this file only chooses keys and algorithms and applies
//! the OpenID rules.
//!
//! Keys are cached. A token whose `kid` is not cached triggers one refetch, at most once per
//! `min_refetch`, so key rotation just works while an attacker sending random `kid`s cannot make
//! us hammer the provider. The cache is also refreshed once it is [`MAX_AGE`] old, so a key the
//! provider withdraws stops being trusted.
//!
//! The algorithm is never taken from the token alone: the header's `alg` must be one of
//! [`ALLOWED`] (no `none`, no HS*: a provider's keys are public, so an HMAC "signature" keyed
//! with one proves nothing) and must fit the key it names (its `alg` if the JWK has one, else
//! its type and curve). Header parameters that point elsewhere for keys (`jku`, `jwk`, `x5u`,
//! `x5c`) are ignored: keys come only from the configured `jwks_uri`.
//!
//! Errors never contain the token or any part of it.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::logging;
use crate::outbound::{Http, Request};
use crate::secret::Secret;

/// The JWKS document may be at most this long; a larger one is refused whole.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// At most this many keys in the JWKS; a set with more is refused whole (providers publish a
/// handful, and without a `kid` each key of the right type is tried).
pub const MAX_KEYS: usize = 32;
/// Tokens longer than this are refused before any parsing (real id_tokens are a few KiB).
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;
/// Clock skew allowed on `exp`, `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(60);
/// Cached keys older than this are refetched on the next verification (rate limit permitting).
/// If that fetch fails the old keys are still used: an outage of the provider's JWKS endpoint
/// should not stop sign-ins that its current keys can verify.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// RSA keys shorter than this many bits are ignored.
pub const MIN_RSA_BITS: usize = 2048;

/// The signature algorithms accepted in an id_token header. Asymmetric only.
pub const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

const RSA_FAMILY: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Fetches the JWKS at `url` through `http` within `budget`: a GET (no redirects followed, as
/// every outbound call), reading at most [`MAX_JWKS_BYTES`]. The one outbound call this module
/// makes.
fn fetch(http: &dyn Http, url: &str, budget: Duration) -> Result<Vec<u8>, String> {
    let request = Request::get(url, budget)
        .header("Accept", "application/json")
        .limit(MAX_JWKS_BYTES);
    let response = http.call(request).map_err(|e| format!("GET {url}: {e}"))?;
    if response.status != 200 {
        return Err(format!("GET {url} answered HTTP {}", response.status));
    }
    Ok(response.body)
}

/// What the id_token must say, besides being signed by the provider.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The provider's issuer identifier, compared exactly (`iss`).
    pub issuer: &'a str,
    /// Our client_id: must be in `aud`; `azp`, when present or when `aud` names several
    /// audiences, must be it.
    pub audience: &'a str,
    /// The nonce sent in the authorization request, when one was sent.
    pub nonce: Option<&'a str>,
}

/// Why an id_token was refused. Never carries the token or a part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenError {
    /// Not a compact JWS with JSON header and claims, or a required claim is missing.
    Malformed,
    /// The header's `alg` is not allowed (`none`, HS*, unknown) or does not fit the named key.
    UnsupportedAlgorithm,
    /// No key in the provider's JWKS matches, even after a refetch (or a refetch was rate-limited).
    UnknownKey,
    /// The signature does not verify with the key.
    BadSignature,
    WrongIssuer,
    WrongAudience,
    Expired,
    /// `nbf` or `iat` is later than now plus the leeway.
    NotYetValid,
    NonceMismatch,
    /// The JWKS could not be fetched or read, and no cached key could be used. The text is for
    /// the operator's log.
    KeysUnavailable(String),
}

impl IdTokenError {
    /// Stable reason codes, for callers and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IdTokenError::Malformed => "id_token_malformed",
            IdTokenError::UnsupportedAlgorithm => "id_token_algorithm",
            IdTokenError::UnknownKey => "id_token_unknown_key",
            IdTokenError::BadSignature => "id_token_signature",
            IdTokenError::WrongIssuer => "id_token_issuer",
            IdTokenError::WrongAudience => "id_token_audience",
            IdTokenError::Expired => "id_token_expired",
            IdTokenError::NotYetValid => "id_token_not_yet_valid",
            IdTokenError::NonceMismatch => "id_token_nonce",
            IdTokenError::KeysUnavailable(_) => "jwks_unavailable",
        }
    }
}

impl std::fmt::Display for IdTokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            IdTokenError::Malformed => {
                "the id_token is not a well-formed signed JWT with the required claims"
            }
            IdTokenError::UnsupportedAlgorithm => {
                "the id_token's alg is not allowed, or does not fit the key it names"
            }
            IdTokenError::UnknownKey => "no key in the provider's JWKS matches the id_token's kid",
            IdTokenError::BadSignature => "the id_token's signature does not verify",
            IdTokenError::WrongIssuer => "the id_token's iss is not the provider's issuer",
            IdTokenError::WrongAudience => "the id_token was not issued to this client (aud/azp)",
            IdTokenError::Expired => "the id_token has expired",
            IdTokenError::NotYetValid => "the id_token is not valid yet (nbf/iat in the future)",
            IdTokenError::NonceMismatch => "the id_token's nonce is not the one sent",
            IdTokenError::KeysUnavailable(detail) => {
                return write!(f, "the provider's JWKS is unavailable: {detail}")
            }
        };
        f.write_str(text)
    }
}

impl std::error::Error for IdTokenError {}

/// One usable verification key from the JWKS.
struct Key {
    kid: Option<String>,
    /// The algorithms this key may verify: its JWK `alg`, or else what its type and curve allow.
    algorithms: Vec<Algorithm>,
    decoding: DecodingKey,
}

/// The keys as of one fetch; verifications work on a clone of this, outside any lock.
#[derive(Clone)]
struct Snapshot {
    keys: Arc<[Key]>,
    /// Bumped by every successful fetch, so a caller who waited for someone else's fetch sees it.
    generation: u64,
    /// When the keys were fetched; `None` until the first successful fetch.
    fetched: Option<Instant>,
}

struct Cache {
    snapshot: Snapshot,
    /// The last fetch attempt, successful or not: the rate limit counts from here.
    attempted: Option<Instant>,
    /// Why the last attempt failed, while no later one has succeeded.
    last_error: Option<String>,
}

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A provider's signing keys, fetched from its `jwks_uri` on first use and cached.
pub struct Keys {
    jwks_uri: String,
    http: Arc<dyn Http>,
    min_refetch: Duration,
    cache: Mutex<Cache>,
    /// Held for the length of a fetch, so concurrent verifications that need new keys wait for
    /// one fetch instead of each making their own. The cache lock is not held across the fetch:
    /// verifications whose key is cached never wait for the provider.
    fetching: Mutex<()>,
    clock: Clock,
}

impl Keys {
    /// `min_refetch` is the least time between two fetches (e.g. 10 s); the first fetch happens
    /// on the first verification, through `http`.
    pub fn new(jwks_uri: String, http: Arc<dyn Http>, min_refetch: Duration) -> Keys {
        Keys {
            jwks_uri,
            http,
            min_refetch,
            cache: Mutex::new(Cache {
                snapshot: Snapshot {
                    keys: Arc::from(Vec::new()),
                    generation: 0,
                    fetched: None,
                },
                attempted: None,
                last_error: None,
            }),
            fetching: Mutex::new(()),
            clock: Arc::new(Instant::now),
        }
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: Clock) -> Keys {
        self.clock = clock;
        self
    }

    /// Verifies the id_token's signature with the provider's key (the algorithm allowed by the
    /// key, never `none` or HS*), then `iss` (exact), `aud` (contains our client id; with several
    /// audiences `azp` must be our client id), `exp` (with [`LEEWAY`]), `nbf` and `iat` (not in
    /// the future beyond the leeway), `sub` (present) and `nonce` (exact, when expected).
    /// Returns the claims.
    ///
    /// Blocking: may fetch the JWKS within `budget`, so call it where the provider's other calls
    /// run (the blocking pool). A caller that finds another's fetch under way waits for it (at
    /// most that fetch's budget) rather than fetching again.
    pub fn verify(
        &self,
        id_token: &str,
        expect: &Expect,
        budget: Duration,
    ) -> Result<Value, IdTokenError> {
        if id_token.len() > MAX_TOKEN_BYTES {
            return Err(IdTokenError::Malformed);
        }
        let (alg, kid) = read_header(id_token)?;
        let mut snapshot = self.lock_cache().snapshot.clone();
        let stale = snapshot
            .fetched
            .is_none_or(|t| (self.clock)().saturating_duration_since(t) >= MAX_AGE);
        let mut failure = None;
        if stale
            || matches!(
                select(&snapshot.keys, kid.as_deref(), alg),
                Err(IdTokenError::UnknownKey)
            )
        {
            match self.refresh(snapshot.generation, budget) {
                Ok(Some(fresh)) => snapshot = fresh,
                // Rate-limited: decide with the keys we have.
                Ok(None) => {}
                Err(e) if snapshot.fetched.is_none() => return Err(e),
                Err(e) => failure = Some(e),
            }
        }
        let candidates = match select(&snapshot.keys, kid.as_deref(), alg) {
            Ok(candidates) => candidates,
            Err(IdTokenError::UnknownKey) => {
                return Err(failure.unwrap_or(IdTokenError::UnknownKey))
            }
            Err(e) => return Err(e),
        };
        // With a kid there is normally one candidate; without one, every key of the right type
        // is tried. Only a signature failure moves on to the next key: once a signature verifies,
        // the claims decide.
        for key in candidates {
            match check(id_token, key, alg, expect) {
                Err(IdTokenError::BadSignature) => continue,
                outcome => return outcome,
            }
        }
        Err(IdTokenError::BadSignature)
    }

    /// Fetches the JWKS unless someone else fetched since `seen` (then returns theirs) or the
    /// last attempt is less than `min_refetch` ago (then `Ok(None)`, or an error if no fetch
    /// has ever succeeded).
    fn refresh(&self, seen: u64, budget: Duration) -> Result<Option<Snapshot>, IdTokenError> {
        let _fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        let now = (self.clock)();
        {
            let mut cache = self.lock_cache();
            if cache.snapshot.generation != seen {
                return Ok(Some(cache.snapshot.clone()));
            }
            if let Some(last) = cache.attempted {
                if now.saturating_duration_since(last) < self.min_refetch {
                    return match (&cache.snapshot.fetched, &cache.last_error) {
                        (None, Some(error)) => Err(IdTokenError::KeysUnavailable(format!(
                            "{error} (not retried for {} s)",
                            self.min_refetch.as_secs()
                        ))),
                        _ => Ok(None),
                    };
                }
            }
            cache.attempted = Some(now);
        }
        let outcome = fetch(&*self.http, &self.jwks_uri, budget).and_then(|body| parse_jwks(&body));
        match &outcome {
            Ok(keys) => logging::info(
                "jwks_fetched",
                json!({ "jwks_uri": self.jwks_uri, "keys": keys.len() }),
            ),
            Err(error) => logging::warn(
                "jwks_fetch_failed",
                json!({ "jwks_uri": self.jwks_uri, "error": error }),
            ),
        }
        let mut cache = self.lock_cache();
        match outcome {
            Ok(keys) => {
                cache.snapshot = Snapshot {
                    keys: Arc::from(keys),
                    generation: cache.snapshot.generation + 1,
                    fetched: Some(now),
                };
                cache.last_error = None;
                Ok(Some(cache.snapshot.clone()))
            }
            Err(error) => {
                cache.last_error = Some(error.clone());
                Err(IdTokenError::KeysUnavailable(error))
            }
        }
    }

    fn lock_cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The header's `alg` (from [`ALLOWED`] only) and `kid`.
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), IdTokenError> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdTokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| IdTokenError::Malformed)?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| IdTokenError::Malformed)?;
    let alg = header["alg"].as_str().ok_or(IdTokenError::Malformed)?;
    let alg = alg
        .parse::<Algorithm>()
        .ok()
        .filter(|a| ALLOWED.contains(a))
        .ok_or(IdTokenError::UnsupportedAlgorithm)?;
    // RFC 7515 4.1.11: extensions we do not understand must not be ignored.
    if header.get("crit").is_some() {
        return Err(IdTokenError::Malformed);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(IdTokenError::Malformed),
    };
    Ok((alg, kid))
}

/// The keys that may verify a token with this `kid` and `alg`: `UnknownKey` when none has the
/// kid (or, without a kid, none fits the alg), `UnsupportedAlgorithm` when the named key does
/// not fit the alg (an RS256 key offered an ES256 or HS256 token).
fn select<'k>(
    keys: &'k [Key],
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Vec<&'k Key>, IdTokenError> {
    let named: Vec<&Key> = keys
        .iter()
        .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
        .collect();
    if named.is_empty() {
        return Err(IdTokenError::UnknownKey);
    }
    let fitting: Vec<&Key> = named
        .into_iter()
        .filter(|k| k.algorithms.contains(&alg))
        .collect();
    match (fitting.is_empty(), kid) {
        (false, _) => Ok(fitting),
        (true, Some(_)) => Err(IdTokenError::UnsupportedAlgorithm),
        (true, None) => Err(IdTokenError::UnknownKey),
    }
}

/// Signature and claims with one key.
fn check(token: &str, key: &Key, alg: Algorithm, expect: &Expect) -> Result<Value, IdTokenError> {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(&[expect.audience]);
    let claims = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
        .map_err(|e| from_jwt_error(&e))?
        .claims;
    openid_rules(&claims, expect)?;
    Ok(claims)
}

fn from_jwt_error(e: &jsonwebtoken::errors::Error) -> IdTokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => IdTokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => IdTokenError::UnsupportedAlgorithm,
        ErrorKind::ExpiredSignature => IdTokenError::Expired,
        ErrorKind::ImmatureSignature => IdTokenError::NotYetValid,
        ErrorKind::InvalidIssuer => IdTokenError::WrongIssuer,
        ErrorKind::InvalidAudience => IdTokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => IdTokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => IdTokenError::WrongAudience,
        _ => IdTokenError::Malformed,
    }
}

/// The OpenID Connect rules a generic JWT library leaves to us (Core 3.1.3.7): `iss` a string
/// equal to the issuer, `aud` a string or array containing our client id, `azp` our client id
/// when present and required with several audiences, `iat` present and not in the future, and
/// `nonce` equal to the one sent.
fn openid_rules(claims: &Value, expect: &Expect) -> Result<(), IdTokenError> {
    if claims["iss"].as_str() != Some(expect.issuer) {
        return Err(IdTokenError::WrongIssuer);
    }
    let audiences = match &claims["aud"] {
        Value::String(aud) => vec![aud.as_str()],
        Value::Array(list) => list
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()
            .ok_or(IdTokenError::WrongAudience)?,
        _ => return Err(IdTokenError::WrongAudience),
    };
    if !audiences.contains(&expect.audience) {
        return Err(IdTokenError::WrongAudience);
    }
    match claims.get("azp") {
        None if audiences.len() > 1 => return Err(IdTokenError::WrongAudience),
        None => {}
        Some(azp) if azp.as_str() == Some(expect.audience) => {}
        Some(_) => return Err(IdTokenError::WrongAudience),
    }
    let iat = claims["iat"].as_f64().ok_or(IdTokenError::Malformed)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if iat > now + LEEWAY.as_secs_f64() {
        return Err(IdTokenError::NotYetValid);
    }
    if let Some(nonce) = expect.nonce {
        match claims["nonce"].as_str() {
            Some(got) if Secret::new(nonce).matches(got) => {}
            _ => return Err(IdTokenError::NonceMismatch),
        }
    }
    Ok(())
}

/// How many signing keys of a JWKS body verification would use (the deployment check's
/// question: are the provider's keys reachable and usable from here).
pub fn usable_keys(body: &[u8]) -> Result<usize, String> {
    parse_jwks(body).map(|keys| keys.len())
}

/// Reads a JWKS body into usable keys: bounded in size and count; keys for encryption, HMAC
/// (`oct`), unknown types or curves, and RSA under [`MIN_RSA_BITS`] are skipped; a set with no
/// usable key is an error (the cache keeps its previous keys).
fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "the JWKS is over {MAX_JWKS_BYTES} bytes ({} bytes)",
            body.len()
        ));
    }
    let document: Value =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let entries = document["keys"]
        .as_array()
        .ok_or("the JWKS has no \"keys\" array")?;
    if entries.len() > MAX_KEYS {
        return Err(format!(
            "the JWKS has {} keys, over the limit of {MAX_KEYS}",
            entries.len()
        ));
    }
    let keys: Vec<Key> = entries.iter().filter_map(usable_key).collect();
    if keys.is_empty() {
        return Err(format!(
            "none of the JWKS's {} keys is a signing key we accept (RSA of {MIN_RSA_BITS} bits or more, EC P-256 or P-384, Ed25519)",
            entries.len()
        ));
    }
    Ok(keys)
}

fn usable_key(entry: &Value) -> Option<Key> {
    // One key at a time, so a key of a type the library cannot read does not spoil the set.
    let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    if matches!(&jwk.common.key_operations, Some(ops) if !ops.contains(&KeyOperations::Verify)) {
        return None;
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_FAMILY,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        // `oct` keys are shared secrets, never a provider's signing key; unknown types likewise.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(alg) => {
            let alg = Algorithm::try_from(alg).ok()?;
            if !family.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    if let DecodingKeyKind::RsaModulusExponent { n, .. } = decoding.kind() {
        let significant = n.iter().skip_while(|&&b| b == 0).count();
        if significant * 8 < MIN_RSA_BITS {
            return None;
        }
    }
    Some(Key {
        kid: jwk.common.key_id,
        algorithms,
        decoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ISSUER: &str = "https://login.example.test/tenant-1/v2.0";
    const CLIENT: &str = "client-1";
    const NONCE: &str = "nonce-123";
    const URI: &str = "https://login.example.test/keys";

    fn expect() -> Expect<'static> {
        Expect {
            issuer: ISSUER,
            audience: CLIENT,
            nonce: Some(NONCE),
        }
    }

    fn budget() -> Duration {
        Duration::from_secs(5)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": CLIENT,
            "sub": "user-1",
            "exp": now() + 600,
            "iat": now(),
            "nonce": NONCE,
            "tid": "tenant-1",
        })
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A signing key and its public JWK.
    struct Signer {
        encoding: EncodingKey,
        alg: Algorithm,
        jwk: Value,
    }

    impl Signer {
        fn ec(kid: &str) -> Signer {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .unwrap();
            Signer::new(
                EncodingKey::from_ec_der(pkcs8.as_ref()),
                Algorithm::ES256,
                kid,
            )
        }

        /// The committed test-only RSA key (src/provider/testdata/jwks-test-rsa.pem).
        fn rsa(kid: &str) -> Signer {
            let pem = include_str!("testdata/jwks-test-rsa.pem");
            let body: String = pem
                .lines()
                .skip_while(|l| !l.starts_with("-----BEGIN RSA PRIVATE KEY-----"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap();
            Signer::new(EncodingKey::from_rsa_der(&der), Algorithm::RS256, kid)
        }

        fn new(encoding: EncodingKey, alg: Algorithm, kid: &str) -> Signer {
            let mut jwk =
                serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
            jwk["kid"] = json!(kid);
            jwk["use"] = json!("sig");
            Signer { encoding, alg, jwk }
        }

        fn kid(&self) -> &str {
            self.jwk["kid"].as_str().unwrap()
        }

        fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = Some(self.kid().to_string());
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }
    }

    fn jwks(jwks: &[&Value]) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": jwks })).unwrap()
    }

    /// A fake fetch serving whatever body is current, counting calls.
    struct Fake {
        body: Arc<Mutex<Result<Vec<u8>, String>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Fake {
        fn serving(body: Vec<u8>) -> Fake {
            Fake {
                body: Arc::new(Mutex::new(Ok(body))),
                calls: Arc::new(AtomicUsize::new(0)),
            }
        }

        fn fetch(&self) -> Arc<dyn Http> {
            let body = self.body.clone();
            let calls = self.calls.clone();
            Arc::new(move |request: Request| {
                assert_eq!(request.url, URI);
                assert_eq!(request.limit, MAX_JWKS_BYTES);
                calls.fetch_add(1, Ordering::SeqCst);
                match body.lock().unwrap().clone() {
                    Ok(body) => Ok(crate::outbound::Response::new(200, body)),
                    Err(e) => Err(crate::outbound::TransportError::new(
                        crate::outbound::TransportFailure::Connect,
                        e,
                    )),
                }
            })
        }

        fn serve(&self, body: Result<Vec<u8>, String>) {
            *self.body.lock().unwrap() = body;
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    /// A clock the test moves by hand.
    #[derive(Clone)]
    struct FakeClock(Arc<Mutex<Instant>>);

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock(Arc::new(Mutex::new(Instant::now())))
        }

        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }

        fn clock(&self) -> Clock {
            let at = self.0.clone();
            Arc::new(move || *at.lock().unwrap())
        }
    }

    fn keys_with(fake: &Fake, min_refetch: Duration) -> (Keys, FakeClock) {
        let clock = FakeClock::new();
        let keys = Keys::new(URI.into(), fake.fetch(), min_refetch).with_clock(clock.clock());
        (keys, clock)
    }

    #[test]
    fn jwks_good_tokens_verify_and_the_cache_is_reused() {
        let ec = Signer::ec("ec-1");
        let rsa = Signer::rsa("rsa-1");
        let fake = Fake::serving(jwks(&[&ec.jwk, &rsa.jwk]));
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        let got = keys
            .verify(&ec.sign(&claims()), &expect(), budget())
            .unwrap();
        assert_eq!(got["sub"], "user-1");
        assert_eq!(got["tid"], "tenant-1");
        keys.verify(&rsa.sign(&claims()), &expect(), budget())
            .unwrap();
        keys.verify(&ec.sign(&claims()), &expect(), budget())
            .unwrap();
        assert_eq!(fake.calls(), 1, "the JWKS is fetched once and cached");
    }

    #[test]
    fn jwks_microsoft_shaped_keys_without_alg_verify_rs256_and_ps256() {
        let rsa = Signer::rsa("ms-1");
        let mut jwk = rsa.jwk.clone();
        let object = jwk.as_object_mut().unwrap();
        object.remove("alg");
        object.insert("x5t".into(), json!("ms-1"));
        object.insert("x5c".into(), json!(["MIIC..."]));
        object.insert("issuer".into(), json!(ISSUER));
        let fake = Fake::serving(jwks(&[&jwk]));
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        keys.verify(&rsa.sign(&claims()), &expect(), budget())
            .unwrap();
        let mut header = Header::new(Algorithm::PS256);
        header.kid = Some("ms-1".into());
        let ps256 = jsonwebtoken::encode(&header, &claims(), &rsa.encoding).unwrap();
        keys.verify(&ps256, &expect(), budget()).unwrap();
    }

    #[test]
    fn jwks_token_without_kid_is_tried_against_each_key_of_its_type() {
        let first = Signer::ec("ec-1");
        let second = Signer::ec("ec-2");
        let fake = Fake::serving(jwks(&[&first.jwk, &second.jwk]));
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &second.encoding)
                .unwrap();
        keys.verify(&token, &expect(), budget()).unwrap();
        let stranger = Signer::ec("ec-3");
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(),
            &stranger.encoding,
        )
        .unwrap();
        assert_eq!(
            keys.verify(&token, &expect(), budget()),
            Err(IdTokenError::BadSignature)
        );
    }

    #[test]
    fn jwks_forged_signature_and_altered_claims_are_refused() {
        let ec = Signer::ec("ec-1");
        let fake = Fake::serving(jwks(&[&ec.jwk]));
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        // Signed by another key under the provider's kid.
        let forger = Signer::ec("ec-1");
        assert_eq!(
            keys.verify(&forger.sign(&claims()), &expect(), budget()),
            Err(IdTokenError::BadSignature)
        );
        // The provider's signature over other claims.
        let genuine = ec.sign(&claims());
        let mut parts: Vec<&str> = genuine.split('.').collect();
        let mut altered = claims();
        altered["sub"] = json!("admin");
        let payload = b64(altered.to_string().as_bytes());
        parts[1] = &payload;
        assert_eq!(
            keys.verify(&parts.join("."), &expect(), budget()),
            Err(IdTokenError::BadSignature)
        );
    }

    #[test]
    fn jwks_claims_are_checked_by_the_openid_rules() {
        let ec = Signer::ec("ec-1");
        let fake = Fake::serving(jwks(&[&ec.jwk]));
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        let with = |name: &str, value: Value| {
            let mut c = claims();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(name);
            } else {
                c[name] = value;
            }
            keys.verify(&ec.sign(&c), &expect(), budget())
        };
        use IdTokenError::*;
        assert_eq!(
            with("iss", json!("https://evil.example.test/")),
            Err(WrongIssuer)
        );
        assert_eq!(with("iss", json!([ISSUER])), Err(WrongIssuer));
        assert_eq!(with("iss", Value::Null), Err(WrongIssuer));
        assert_eq!(with("aud", json!("client-2")), Err(WrongAudience));
        assert_eq!(with("aud", Value::Null), Err(WrongAudience));
        // Several audiences: azp must name us.
        assert_eq!(with("aud", json!([CLIENT, "other"])), Err(WrongAudience));
        let mut c = claims();
        c["aud"] = json!([CLIENT, "other"]);
        c["azp"] = json!(CLIENT);
        keys.verify(&ec.sign(&c), &expect(), budget()).unwrap();
        c["azp"] = json!("other");
        assert_eq!(
            keys.verify(&ec.sign(&c), &expect(), budget()),
            Err(WrongAudience)
        );
        assert!(with("aud", json!([CLIENT])).is_ok());
        assert_eq!(with("azp", json!("other")), Err(WrongAudience));
        // exp, with the leeway.
        assert_eq!(with("exp", json!(now() - 3600)), Err(Expired));
        assert!(with("exp", json!(now() - 30)).is_ok());
        assert_eq!(with("exp", Value::Null), Err(Malformed));
        assert_eq!(with("iat", json!(now() + 3600)), Err(NotYetValid));
        assert_eq!(with("iat", Value::Null), Err(Malformed));
        assert_eq!(with("nbf", json!(now() + 3600)), Err(NotYetValid));
        assert_eq!(with("sub", Value::Null), Err(Malformed));
        assert_eq!(with("nonce", json!("nonce-456")), Err(NonceMismatch));
        assert_eq!(with("nonce", Value::Null), Err(NonceMismatch));
        // No nonce expected: none is checked.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        let relaxed = Expect {
            nonce: None,
            ..expect()
        };
        keys.verify(&ec.sign(&c), &relaxed, budget()).unwrap();
        assert_eq!(fake.calls(), 1);
    }

    #[test]
    fn jwks_alg_none_and_hmac_key_confusion_are_refused() {
        let rsa = Signer::rsa("rsa-1");
        let ec = Signer::ec("ec-1");
        let fake = Fake::serving(jwks(&[&rsa.jwk, &ec.jwk]));
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        let payload = b64(claims().to_string().as_bytes());
        for header in [
            json!({ "alg": "none", "kid": "rsa-1" }),
            json!({ "alg": "none" }),
            json!({ "alg": "None" }),
            json!({ "alg": "" }),
        ] {
            let token = format!("{}.{payload}.", b64(header.to_string().as_bytes()));
            assert_eq!(
                keys.verify(&token, &expect(), budget()),
                Err(IdTokenError::UnsupportedAlgorithm),
                "{header}"
            );
        }
        // HS256 keyed with the provider's public key, as published in its JWKS.
        for public in [
            rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
            jwks(&[&rsa.jwk]),
            ec.jwk["x"].as_str().unwrap().as_bytes().to_vec(),
        ] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-1".into());
            let token =
                jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&public))
                    .unwrap();
            assert_eq!(
                keys.verify(&token, &expect(), budget()),
                Err(IdTokenError::UnsupportedAlgorithm)
            );
        }
        // An allowed algorithm of the wrong family for the named key.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("rsa-1".into());
        let token = jsonwebtoken::encode(&header, &claims(), &ec.encoding).unwrap();
        assert_eq!(
            keys.verify(&token, &expect(), budget()),
            Err(IdTokenError::UnsupportedAlgorithm)
        );
        // A JWK that pins RS256 refuses PS256 with the same key.
        let mut header = Header::new(Algorithm::PS256);
        header.kid = Some("rsa-1".into());
        let token = jsonwebtoken::encode(&header, &claims(), &rsa.encoding).unwrap();
        assert_eq!(
            keys.verify(&token, &expect(), budget()),
            Err(IdTokenError::UnsupportedAlgorithm)
        );
        // Refusals on the algorithm never refetch.
        assert_eq!(fake.calls(), 1);
    }

    #[test]
    fn jwks_malformed_tokens_are_refused() {
        let ec = Signer::ec("ec-1");
        let fake = Fake::serving(jwks(&[&ec.jwk]));
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        let good = ec.sign(&claims());
        let header = b64(br#"{"alg":"ES256","kid":"ec-1"}"#);
        for token in [
            String::new(),
            "a.b".into(),
            format!("{good}.extra.parts"),
            "!!!.e30.sig".into(),
            format!("{}.e30.sig", b64(b"not json")),
            format!("{}.e30.sig", b64(br#"{"kid":"ec-1"}"#)),
            format!("{}.e30.sig", b64(br#"{"alg":"ES256","kid":7}"#)),
            format!(
                "{}.e30.sig",
                b64(br#"{"alg":"ES256","kid":"ec-1","crit":["exp"]}"#)
            ),
            format!("{header}.{}", "A".repeat(MAX_TOKEN_BYTES)),
        ] {
            assert_eq!(
                keys.verify(&token, &expect(), budget()),
                Err(IdTokenError::Malformed)
            );
        }
    }

    #[test]
    fn jwks_unknown_kid_refetches_once_after_rotation() {
        let old = Signer::ec("old");
        let new = Signer::ec("new");
        let fake = Fake::serving(jwks(&[&old.jwk]));
        let (keys, clock) = keys_with(&fake, Duration::from_secs(10));
        keys.verify(&old.sign(&claims()), &expect(), budget())
            .unwrap();
        assert_eq!(fake.calls(), 1);
        // The provider rotates; a token under the new kid arrives after min_refetch.
        fake.serve(Ok(jwks(&[&new.jwk, &old.jwk])));
        clock.advance(Duration::from_secs(11));
        keys.verify(&new.sign(&claims()), &expect(), budget())
            .unwrap();
        assert_eq!(fake.calls(), 2, "exactly one refetch");
        keys.verify(&new.sign(&claims()), &expect(), budget())
            .unwrap();
        keys.verify(&old.sign(&claims()), &expect(), budget())
            .unwrap();
        assert_eq!(fake.calls(), 2);
    }

    #[test]
    fn jwks_a_storm_of_unknown_kids_is_rate_limited() {
        let ec = Signer::ec("ec-1");
        let fake = Fake::serving(jwks(&[&ec.jwk]));
        let (keys, clock) = keys_with(&fake, Duration::from_secs(10));
        keys.verify(&ec.sign(&claims()), &expect(), budget())
            .unwrap();
        clock.advance(Duration::from_secs(11));
        for i in 0..50 {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(format!("random-{i}"));
            let token = jsonwebtoken::encode(&header, &claims(), &ec.encoding).unwrap();
            assert_eq!(
                keys.verify(&token, &expect(), budget()),
                Err(IdTokenError::UnknownKey)
            );
            clock.advance(Duration::from_millis(100));
        }
        assert_eq!(fake.calls(), 2, "one refetch for the whole storm");
        // Known keys still verify meanwhile.
        keys.verify(&ec.sign(&claims()), &expect(), budget())
            .unwrap();
        // Once min_refetch has passed since the last attempt, one more refetch is allowed.
        clock.advance(Duration::from_secs(10));
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("random-x".into());
        let token = jsonwebtoken::encode(&header, &claims(), &ec.encoding).unwrap();
        for _ in 0..3 {
            assert_eq!(
                keys.verify(&token, &expect(), budget()),
                Err(IdTokenError::UnknownKey)
            );
        }
        assert_eq!(fake.calls(), 3);
    }

    #[test]
    fn jwks_an_answer_other_than_200_is_keys_unavailable_naming_the_status() {
        let http: Arc<dyn Http> = Arc::new(|request: Request| {
            assert_eq!(request.header_value("accept"), Some("application/json"));
            Ok(crate::outbound::Response::new(404, "not here"))
        });
        let keys = Keys::new(URI.into(), http, Duration::ZERO);
        let token = Signer::ec("ec-1").sign(&claims());
        match keys.verify(&token, &expect(), budget()) {
            Err(IdTokenError::KeysUnavailable(d)) => {
                assert!(d.contains(&format!("GET {URI} answered HTTP 404")), "{d}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn jwks_fetch_failure_is_keys_unavailable_and_rate_limited() {
        let ec = Signer::ec("ec-1");
        let fake = Fake::serving(Vec::new());
        fake.serve(Err("connection refused".into()));
        let (keys, clock) = keys_with(&fake, Duration::from_secs(10));
        let token = ec.sign(&claims());
        let err = keys.verify(&token, &expect(), budget()).unwrap_err();
        assert_eq!(err.reason(), "jwks_unavailable");
        assert!(
            matches!(&err, IdTokenError::KeysUnavailable(d) if d.contains("connection refused")),
            "{err:?}"
        );
        assert!(!err.to_string().contains(&token));
        // Within min_refetch: no new attempt, the same answer.
        assert!(matches!(
            keys.verify(&token, &expect(), budget()),
            Err(IdTokenError::KeysUnavailable(_))
        ));
        assert_eq!(fake.calls(), 1);
        // The endpoint recovers.
        fake.serve(Ok(jwks(&[&ec.jwk])));
        clock.advance(Duration::from_secs(10));
        keys.verify(&token, &expect(), budget()).unwrap();
        assert_eq!(fake.calls(), 2);
        // Bodies that are not a key set are failures too.
        let fake = Fake::serving(b"<html>".to_vec());
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        assert!(matches!(
            keys.verify(&token, &expect(), budget()),
            Err(IdTokenError::KeysUnavailable(_))
        ));
    }

    #[test]
    fn jwks_stale_keys_are_refreshed_and_kept_if_the_refresh_fails() {
        let ec = Signer::ec("ec-1");
        let fake = Fake::serving(jwks(&[&ec.jwk]));
        let (keys, clock) = keys_with(&fake, Duration::from_secs(10));
        keys.verify(&ec.sign(&claims()), &expect(), budget())
            .unwrap();
        clock.advance(MAX_AGE);
        fake.serve(Err("timed out".into()));
        keys.verify(&ec.sign(&claims()), &expect(), budget())
            .unwrap();
        assert_eq!(fake.calls(), 2);
        // The provider withdraws the key: after the next refresh it no longer verifies.
        let other = Signer::ec("ec-2");
        fake.serve(Ok(jwks(&[&other.jwk])));
        clock.advance(MAX_AGE);
        assert_eq!(
            keys.verify(&ec.sign(&claims()), &expect(), budget()),
            Err(IdTokenError::UnknownKey)
        );
        assert_eq!(fake.calls(), 3);
    }

    #[test]
    fn jwks_oversized_or_crowded_key_sets_are_refused() {
        let ec = Signer::ec("ec-1");
        let token = ec.sign(&claims());
        let mut padded = json!({ "keys": [ec.jwk], "padding": "" });
        padded["padding"] = json!("x".repeat(MAX_JWKS_BYTES));
        let crowded: Vec<Value> = (0..=MAX_KEYS)
            .map(|i| {
                let mut k = ec.jwk.clone();
                k["kid"] = json!(format!("k{i}"));
                k
            })
            .collect();
        for body in [
            serde_json::to_vec(&padded).unwrap(),
            serde_json::to_vec(&json!({ "keys": crowded })).unwrap(),
        ] {
            let fake = Fake::serving(body);
            let (keys, _) = keys_with(&fake, Duration::from_secs(10));
            assert!(matches!(
                keys.verify(&token, &expect(), budget()),
                Err(IdTokenError::KeysUnavailable(_))
            ));
        }
        // Exactly MAX_KEYS is fine.
        let fake =
            Fake::serving(serde_json::to_vec(&json!({ "keys": crowded[..MAX_KEYS] })).unwrap());
        let (keys, _) = keys_with(&fake, Duration::from_secs(10));
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k3".into());
        let token = jsonwebtoken::encode(&header, &claims(), &ec.encoding).unwrap();
        keys.verify(&token, &expect(), budget()).unwrap();
    }

    #[test]
    fn jwks_keys_that_are_not_signing_keys_are_skipped() {
        let ec = Signer::ec("ec-1");
        let secret =
            json!({ "kty": "oct", "kid": "hmac", "k": b64(b"shared secret"), "alg": "HS256" });
        let mut encryption = ec.jwk.clone();
        encryption["kid"] = json!("enc");
        encryption["use"] = json!("enc");
        let mut mismatched = ec.jwk.clone();
        mismatched["kid"] = json!("mismatch");
        mismatched["alg"] = json!("RS256");
        let mut short_rsa = json!({ "kty": "RSA", "kid": "short", "e": "AQAB" });
        short_rsa["n"] = json!(b64(&[0xC5; 128]));
        let unknown = json!({ "kty": "XYZ", "kid": "odd" });
        let fake = Fake::serving(jwks(&[
            &secret,
            &encryption,
            &mismatched,
            &short_rsa,
            &unknown,
            &ec.jwk,
        ]));
        let (keys, _) = keys_with(&fake, Duration::ZERO);
        keys.verify(&ec.sign(&claims()), &expect(), budget())
            .unwrap();
        let hs = {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("hmac".into());
            jsonwebtoken::encode(
                &header,
                &claims(),
                &EncodingKey::from_secret(b"shared secret"),
            )
            .unwrap()
        };
        assert_eq!(
            keys.verify(&hs, &expect(), budget()),
            Err(IdTokenError::UnsupportedAlgorithm)
        );
        for kid in ["enc", "mismatch"] {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(kid.into());
            let token = jsonwebtoken::encode(&header, &claims(), &ec.encoding).unwrap();
            assert_eq!(
                keys.verify(&token, &expect(), budget()),
                Err(IdTokenError::UnknownKey),
                "{kid}"
            );
        }
        // Only unusable keys: the set is refused.
        let fake = Fake::serving(jwks(&[&secret, &encryption, &short_rsa]));
        let (keys, _) = keys_with(&fake, Duration::ZERO);
        assert!(matches!(
            keys.verify(&ec.sign(&claims()), &expect(), budget()),
            Err(IdTokenError::KeysUnavailable(_))
        ));
    }

    #[test]
    fn jwks_concurrent_verifications_share_one_fetch() {
        let ec = Signer::ec("ec-1");
        let token = ec.sign(&claims());
        let body = jwks(&[&ec.jwk]);
        let calls = Arc::new(AtomicUsize::new(0));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let entered_tx = Mutex::new(entered_tx);
        let counter = calls.clone();
        let fetch = move |_: Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = entered_tx.lock().unwrap().send(());
            // Returns at once for any fetch after the first (the sender is dropped by then).
            let _ = release_rx.lock().unwrap().recv();
            Ok(crate::outbound::Response::new(200, body.clone()))
        };
        // min_refetch zero: only single-flight keeps the waiters from fetching again.
        let keys = Arc::new(Keys::new(URI.into(), Arc::new(fetch), Duration::ZERO));
        let spawn = |keys: &Arc<Keys>| {
            let keys = keys.clone();
            let token = token.clone();
            std::thread::spawn(move || keys.verify(&token, &expect(), budget()))
        };
        let first = spawn(&keys);
        entered_rx.recv().unwrap();
        let others: Vec<_> = (0..6).map(|_| spawn(&keys)).collect();
        // Give the others a moment to queue behind the fetch (correct either way).
        std::thread::sleep(Duration::from_millis(50));
        release_tx.send(()).unwrap();
        drop(release_tx);
        first.join().unwrap().unwrap();
        for other in others {
            other.join().unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn jwks_reasons_are_stable() {
        use IdTokenError::*;
        let all = [
            (Malformed, "id_token_malformed"),
            (UnsupportedAlgorithm, "id_token_algorithm"),
            (UnknownKey, "id_token_unknown_key"),
            (BadSignature, "id_token_signature"),
            (WrongIssuer, "id_token_issuer"),
            (WrongAudience, "id_token_audience"),
            (Expired, "id_token_expired"),
            (NotYetValid, "id_token_not_yet_valid"),
            (NonceMismatch, "id_token_nonce"),
            (KeysUnavailable("x".into()), "jwks_unavailable"),
        ];
        for (error, reason) in all {
            assert_eq!(error.reason(), reason);
        }
    }
}
