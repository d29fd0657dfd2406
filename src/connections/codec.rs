//! A connection as the durable stores keep it: one JSON record, sealed whole with the keyring
//! (so tokens, the credential's hash, the subject and the e-mail are never in the clear), under
//! the store key as associated data. `last_used_at` travels apart (see `Connection`).

use super::model::{Connection, CredentialHash, Intent, IntentState, Status, StoredGrant};
use crate::keyring::Keyring;
use crate::secret::Secret;
use crate::store::Unavailable;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The record format; a reader refuses a record of a version it does not know rather than
/// guess at it.
const VERSION: u64 = 1;

pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn opt_ms(t: Option<SystemTime>) -> Value {
    t.map(ms).map_or(Value::Null, Value::from)
}

pub fn to_json(c: &Connection) -> Value {
    let g = &c.grant;
    json!({
        "v": VERSION,
        "id": c.id, "provider": c.provider, "subject": c.subject, "tenant": c.tenant,
        "email": c.email, "scopes": c.scopes, "status": c.status.name(),
        "created_at": ms(c.created_at), "last_refresh_at": opt_ms(c.last_refresh_at),
        "next_refresh_at": opt_ms(c.next_refresh_at),
        "credential": crate::secret::hex(&c.credential.0),
        "grant": {
            "access_token": g.access_token.expose(), "expires_at": opt_ms(g.expires_at),
            "refresh_token": g.refresh_token.as_ref().map(Secret::expose),
            "token_type": g.token_type, "scope": g.scope, "generation": g.generation,
            "issued_at": ms(g.issued_at),
        },
        "intent": c.intent.as_ref().map(|i| json!({
            "attempt": i.attempt, "generation": i.generation, "started_at": ms(i.started_at),
            "since": ms(i.since), "state": i.state.name(),
        })),
        "backoff_until": opt_ms(c.backoff_until), "failures": c.failures,
        "last_error": c.last_error, "last_attempt": c.last_attempt,
    })
}

pub fn from_json(v: &Value) -> Option<Connection> {
    if v["v"].as_u64()? != VERSION {
        return None;
    }
    let text = |v: &Value, k: &str| v[k].as_str().map(String::from);
    let time = |v: &Value, k: &str| v[k].as_u64().map(from_ms);
    let g = &v["grant"];
    let credential = hex_32(v["credential"].as_str()?)?;
    let intent = match &v["intent"] {
        Value::Null => None,
        i => Some(Intent {
            attempt: text(i, "attempt")?,
            generation: i["generation"].as_u64()?,
            started_at: time(i, "started_at")?,
            since: time(i, "since")?,
            state: IntentState::parse(i["state"].as_str()?)?,
        }),
    };
    Some(Connection {
        id: text(v, "id")?,
        provider: text(v, "provider")?,
        subject: text(v, "subject")?,
        tenant: text(v, "tenant"),
        email: text(v, "email"),
        scopes: v["scopes"]
            .as_array()?
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect(),
        status: Status::parse(v["status"].as_str()?)?,
        created_at: time(v, "created_at")?,
        last_refresh_at: time(v, "last_refresh_at"),
        next_refresh_at: time(v, "next_refresh_at"),
        last_used_at: None,
        credential: CredentialHash(credential),
        grant: StoredGrant {
            access_token: Secret::new(text(g, "access_token")?),
            expires_at: time(g, "expires_at"),
            refresh_token: text(g, "refresh_token").map(Secret::new),
            token_type: text(g, "token_type")?,
            scope: text(g, "scope").unwrap_or_default(),
            generation: g["generation"].as_u64()?,
            issued_at: time(g, "issued_at")?,
        },
        intent,
        backoff_until: time(v, "backoff_until"),
        failures: v["failures"].as_u64().unwrap_or(0) as u32,
        last_error: text(v, "last_error"),
        last_attempt: text(v, "last_attempt"),
    })
}

fn hex_32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The connection sealed under `context` (the store key it is kept under).
pub fn seal(keys: &Keyring, context: &str, c: &Connection) -> Vec<u8> {
    keys.seal(context.as_bytes(), to_json(c).to_string().as_bytes())
}

/// Opens what `seal` made. A record that does not open (a key no longer listed, a value moved
/// under another key) or does not parse is an error, never a guess.
pub fn open(keys: &Keyring, context: &str, sealed: &[u8]) -> Result<Connection, Unavailable> {
    keys.open(context.as_bytes(), sealed)
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
        .and_then(|v| from_json(&v))
        .ok_or_else(|| {
            Unavailable(
                "connections: a record did not decrypt or parse (is its key still listed in OAUTH_RELAY_ENCRYPTION_KEY?)".into(),
            )
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Connection {
        let t = |s: u64| UNIX_EPOCH + Duration::from_millis(s);
        Connection {
            id: "conn_x".into(),
            provider: "github".into(),
            subject: "5830144".into(),
            tenant: Some("t".into()),
            email: Some("ana@example.com".into()),
            scopes: vec!["read:user".into()],
            status: Status::Active,
            created_at: t(1_000),
            last_refresh_at: Some(t(2_000)),
            next_refresh_at: None,
            last_used_at: None,
            credential: CredentialHash::of("ckey_1"),
            grant: StoredGrant {
                access_token: Secret::new("at-1"),
                expires_at: Some(t(3_000)),
                refresh_token: Some(Secret::new("rt-1")),
                token_type: "bearer".into(),
                scope: "read:user".into(),
                generation: 7,
                issued_at: t(2_000),
            },
            intent: Some(Intent {
                attempt: "a1".into(),
                generation: 7,
                started_at: t(2_500),
                since: t(2_600),
                state: IntentState::Ambiguous,
            }),
            backoff_until: Some(t(4_000)),
            failures: 2,
            last_error: Some("http_502".into()),
            last_attempt: Some("a0".into()),
        }
    }

    #[test]
    fn a_record_round_trips_and_seals() {
        let c = sample();
        assert_eq!(from_json(&to_json(&c)).unwrap(), c);
        let mut bare = c.clone();
        bare.intent = None;
        bare.grant.refresh_token = None;
        bare.tenant = None;
        assert_eq!(from_json(&to_json(&bare)).unwrap(), bare);
        let keys = Keyring::parse("k:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let sealed = seal(&keys, "ctx", &c);
        let text = String::from_utf8_lossy(&sealed);
        for secret in ["at-1", "rt-1", "5830144", "ana@example.com"] {
            assert!(!text.contains(secret), "{secret} in the clear");
        }
        assert_eq!(open(&keys, "ctx", &sealed).unwrap(), c);
        assert!(open(&keys, "other", &sealed).is_err());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("at-1") && !shown.contains("rt-1"),
            "{shown}"
        );
        let mut future = to_json(&c);
        future["v"] = json!(2);
        assert!(from_json(&future).is_none());
    }
}
