//! A kept connection: who signed in, the grant the broker keeps for them, and where its refresh
//! stands (the intent of the one refresh in progress, back-off, the last error).

use crate::secret::Secret;
use ring::digest::{digest, SHA256};
use std::time::SystemTime;
use subtle::ConstantTimeEq;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The grant is believed alive: tokens are served and refreshed.
    Active,
    /// The grant is dead (the provider said `invalid_grant`, or a refresh of a one-time rotator
    /// ended in doubt): a person must sign in again (`Connections::revive`).
    NeedsReauth,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::NeedsReauth => "needs_reauth",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "active" => Some(Status::Active),
            "needs_reauth" => Some(Status::NeedsReauth),
            _ => None,
        }
    }
}

/// The tokens of one grant generation. Generation 0 is the sign-in's; each committed refresh
/// (and each re-authorization) is the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGrant {
    pub access_token: Secret,
    /// `None`: the access token does not expire.
    pub expires_at: Option<SystemTime>,
    /// `None` where the provider issues none: the access token cannot be renewed.
    pub refresh_token: Option<Secret>,
    pub token_type: String,
    /// The scope the provider reported for this generation (may be empty).
    pub scope: String,
    pub generation: u64,
    /// When this generation was obtained: with `expires_at`, the access token's lifetime.
    pub issued_at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntentState {
    /// Its owner is presenting the refresh token (or about to); `since` is its last heartbeat.
    InFlight,
    /// The presentation's outcome is unknown (timeout or reset after sending); `since` is when
    /// that was recorded. Re-presented after the settle window only to a provider that keeps
    /// old refresh tokens valid.
    Ambiguous,
    /// Its owner stopped beating and the provider rotates one-time: the connection went to
    /// `needs_reauth` without anyone presenting again. The owner's own outcome, should it come
    /// back, is still recorded (it is the only presentation of that generation).
    Abandoned,
}

impl IntentState {
    pub fn name(self) -> &'static str {
        match self {
            IntentState::InFlight => "in_flight",
            IntentState::Ambiguous => "ambiguous",
            IntentState::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<IntentState> {
        match s {
            "in_flight" => Some(IntentState::InFlight),
            "ambiguous" => Some(IntentState::Ambiguous),
            "abandoned" => Some(IntentState::Abandoned),
            _ => None,
        }
    }
}

/// The record, committed before a refresh token is presented, that one attempt (and only it)
/// presents the refresh token of `generation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub attempt: String,
    pub generation: u64,
    pub started_at: SystemTime,
    /// See `IntentState`: the last heartbeat, or when the state was entered.
    pub since: SystemTime,
    pub state: IntentState,
}

/// SHA-256 of a connection's credential: the credential itself is handed out once, at creation.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialHash(pub [u8; 32]);

impl CredentialHash {
    pub fn of(credential: &str) -> CredentialHash {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, credential.as_bytes()).as_ref());
        CredentialHash(out)
    }

    /// Compares in constant time (both sides are fixed-size digests, so no length leaks).
    pub fn matches(&self, presented: &str) -> bool {
        self.0.ct_eq(&CredentialHash::of(presented).0).into()
    }
}

impl std::fmt::Debug for CredentialHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialHash([redacted])")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// `conn_` and 144 random bits, URL-safe.
    pub id: String,
    /// The provider's name (`m365`, `github`, ...).
    pub provider: String,
    /// The provider's stable id of the account.
    pub subject: String,
    pub tenant: Option<String>,
    pub email: Option<String>,
    /// The scopes the connection was made with (presented again on refresh where a provider
    /// wants them).
    pub scopes: Vec<String>,
    pub status: Status,
    pub created_at: SystemTime,
    pub last_refresh_at: Option<SystemTime>,
    /// When the broker refreshes the grant by itself to keep it from dying unused (the
    /// provider's inactivity limit); `None`: the provider has none.
    pub next_refresh_at: Option<SystemTime>,
    /// Kept apart from the rest by the stores (written without a revision check, at most
    /// about once a minute), so serving a token does not contend with refreshes.
    pub last_used_at: Option<SystemTime>,
    pub credential: CredentialHash,
    pub grant: StoredGrant,
    pub intent: Option<Intent>,
    pub backoff_until: Option<SystemTime>,
    /// Refreshes refused in a row: the back-off's exponent.
    pub failures: u32,
    /// A reason code (`invalid_grant`, `refresh_ambiguous`, a provider's OAuth error code...).
    pub last_error: Option<String>,
    /// The attempt whose outcome was recorded last: how an attempt whose write's reply was lost
    /// finds out that the write landed.
    pub last_attempt: Option<String>,
}

impl Connection {
    /// Whether `presented` is this connection's credential (constant time).
    pub fn credential_matches(&self, presented: &str) -> bool {
        self.credential.matches(presented)
    }

    /// When the keep-alive should look at this connection: now when an intent may need
    /// resolving, at `next_refresh_at` otherwise, never while it needs re-authorization. The
    /// stores keep this in the clear (a time, nothing secret) so `due` needs no decryption.
    pub fn attention_at(&self) -> Option<SystemTime> {
        if self.status != Status::Active {
            return None;
        }
        if self.intent.is_some() {
            return Some(SystemTime::UNIX_EPOCH);
        }
        self.next_refresh_at
    }
}

/// A new connection id: `conn_` and 144 random bits (24 URL-safe characters).
pub fn new_id() -> String {
    format!("conn_{}", crate::random::id(18))
}

/// A new per-connection credential: `ckey_` and 256 random bits.
pub fn new_credential() -> Secret {
    Secret::new(format!("ckey_{}", crate::random::id(32)))
}

/// A refresh attempt's id (128 bits): what makes its intent its own.
pub fn new_attempt() -> String {
    crate::random::id(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_credentials_are_random_url_safe_and_long_enough() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(a.starts_with("conn_") && a.len() == 5 + 24, "{a}");
        assert!(a[5..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let c = new_credential();
        assert!(c.expose().starts_with("ckey_") && c.expose().len() == 5 + 43);
        assert_ne!(new_attempt(), new_attempt());
    }

    #[test]
    fn credentials_compare_by_hash_and_never_print() {
        let c = new_credential();
        let h = CredentialHash::of(c.expose());
        assert!(h.matches(c.expose()));
        assert!(!h.matches(&c.expose()[..c.expose().len() - 1]));
        assert!(!h.matches(""));
        assert_eq!(format!("{h:?}"), "CredentialHash([redacted])");
    }
}
